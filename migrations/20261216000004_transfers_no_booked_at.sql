-- A transfer's status already says whether it was booked (succeeded or
-- failed); the timestamp was never read.
ALTER TABLE transfers DROP COLUMN booked_at;
