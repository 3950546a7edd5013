-- A requester that may move users' wallets (withdraw from them): the
-- platform's own wallet application, registered like a merchant with
-- `payfleet merchant add --acts-for-users`. A merchant selling goods may
-- not: its key would otherwise reach every user's money.
ALTER TABLE merchants ADD COLUMN acts_for_users boolean NOT NULL DEFAULT false;
