-- `payfleet wallet freeze|unfreeze`: an operator stops a wallet's money
-- moving (suspected fraud, a court order) and lets it move again, audited.
ALTER TABLE user_actions DROP CONSTRAINT user_actions_action_check;
ALTER TABLE user_actions ADD CONSTRAINT user_actions_action_check
    CHECK (action IN ('add', 'freeze_wallet', 'unfreeze_wallet'));
