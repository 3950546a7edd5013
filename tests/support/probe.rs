//! The probe stages: two small real stages that exercise the runtime the way
//! payment stages will. `probe-transfer` applies a transfer to an account
//! (a row, a posting, a balance update) and hands a receipt to
//! `probe-receipt`, which moves the transfer from `applied` to `receipted`
//! with a compare-and-set. A double effect shows up as a second posting, a
//! wrong balance or a second receipt.

use payfleet_common::{
    runtime::{Inbound, Outcome, Stage, StageError, StageTx, Undecodable},
    transition::{self, Status},
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const TRANSFER_STAGE: &str = "probe-transfer";
pub const RECEIPT_STAGE: &str = "probe-receipt";

/// Tables of the probe stages (test-only; created after the migrations).
pub const PROBE_SCHEMA: &str = r#"
CREATE TABLE probe_accounts (
    account text PRIMARY KEY,
    balance numeric NOT NULL DEFAULT 0
);
CREATE TABLE probe_transfers (
    id      uuid PRIMARY KEY,
    account text NOT NULL REFERENCES probe_accounts(account),
    amount  numeric NOT NULL,
    status  text NOT NULL CHECK (status IN ('applied', 'receipted'))
);
-- no unique key on purpose: a double effect must be visible
CREATE TABLE probe_postings (
    id          bigserial PRIMARY KEY,
    transfer_id uuid NOT NULL,
    account     text NOT NULL,
    amount      numeric NOT NULL
);
CREATE TABLE probe_receipts (
    id          bigserial PRIMARY KEY,
    transfer_id uuid NOT NULL,
    message_id  text NOT NULL
);
-- every handling attempt, committed outside the stage transaction, with
-- the stage transaction's id (messages of one batch share it)
CREATE TABLE probe_attempts (
    id          bigserial PRIMARY KEY,
    transfer_id uuid NOT NULL,
    message_id  text NOT NULL,
    attempt     integer NOT NULL,
    tx_id       bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- what a conflicting transfer records for review
CREATE TABLE probe_reviews (
    transfer_id uuid NOT NULL,
    message_id  text NOT NULL
);
"#;

/// What the test asks the transfer handler to do besides its work.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Behaviour {
    /// Fail transiently while the attempt number is below this.
    #[serde(default)]
    pub fail_transient_until_attempt: u32,
    /// Fail transiently on every attempt.
    #[serde(default)]
    pub fail_always: bool,
    /// Fail permanently.
    #[serde(default)]
    pub fail_permanent: bool,
    /// Abort the process (worker process only).
    #[serde(default)]
    pub abort: bool,
    /// Sleep inside the transaction, to widen race windows.
    #[serde(default)]
    pub slow_ms: u64,
    /// Meet a conflicting final state: record it for review, apply nothing.
    #[serde(default)]
    pub conflict: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    pub transfer_id: Uuid,
    pub account: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(default)]
    pub behaviour: Behaviour,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    pub transfer_id: Uuid,
}

pub struct TransferStage {
    /// Whether `behaviour.abort` may abort this process.
    pub may_abort: bool,
    pub pool: sqlx::PgPool,
}

impl Stage for TransferStage {
    type Message = Transfer;

    fn name(&self) -> &str {
        TRANSFER_STAGE
    }

    fn decode(&self, inbound: &Inbound) -> Result<Transfer, Undecodable> {
        serde_json::from_slice(&inbound.body).map_err(|e| Undecodable::json(inbound, "transfer", e))
    }

    fn lock_key(&self, message: &Transfer) -> Option<String> {
        Some(message.transfer_id.to_string())
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        m: &Transfer,
    ) -> Result<Outcome, StageError> {
        let tx_id: i64 = sqlx::query_scalar("SELECT txid_current()")
            .fetch_one(tx.conn())
            .await?;
        // Logged on its own connection so it survives the rollback of a failed attempt.
        sqlx::query(
            "INSERT INTO probe_attempts (transfer_id, message_id, attempt, tx_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(m.transfer_id)
        .bind(&inbound.message_id)
        .bind(inbound.attempt as i32)
        .bind(tx_id)
        .execute(&self.pool)
        .await?;
        let b = &m.behaviour;
        if b.abort && self.may_abort {
            eprintln!("probe-transfer: aborting on transfer {}", m.transfer_id);
            std::process::abort();
        }
        if b.fail_permanent {
            return Err(StageError::permanent(format!(
                "transfer {} is refused for good",
                m.transfer_id
            )));
        }
        if b.fail_always || inbound.attempt < b.fail_transient_until_attempt {
            return Err(StageError::transient(format!(
                "transfer {}: ledger unavailable (attempt {})",
                m.transfer_id, inbound.attempt
            )));
        }
        if b.conflict {
            sqlx::query("INSERT INTO probe_reviews (transfer_id, message_id) VALUES ($1, $2)")
                .bind(m.transfer_id)
                .bind(&inbound.message_id)
                .execute(tx.conn())
                .await?;
            return Ok(Outcome::Exception {
                reason: format!("transfer {} conflicts with its final state", m.transfer_id),
            });
        }
        if b.slow_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(b.slow_ms)).await;
        }
        let inserted = sqlx::query(
            "INSERT INTO probe_transfers (id, account, amount, status) VALUES ($1, $2, $3, 'applied')
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(m.transfer_id)
        .bind(&m.account)
        .bind(m.amount)
        .execute(tx.conn())
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(Outcome::Stale {
                reason: format!("transfer {} already applied", m.transfer_id),
            });
        }
        sqlx::query(
            "INSERT INTO probe_postings (transfer_id, account, amount) VALUES ($1, $2, $3)",
        )
        .bind(m.transfer_id)
        .bind(&m.account)
        .bind(m.amount)
        .execute(tx.conn())
        .await?;
        sqlx::query("UPDATE probe_accounts SET balance = balance + $2 WHERE account = $1")
            .bind(&m.account)
            .bind(m.amount)
            .execute(tx.conn())
            .await?;
        tx.set_correlation_id(&m.transfer_id.to_string());
        tx.emit_to_stage(
            RECEIPT_STAGE,
            "probe.receipt",
            &Receipt {
                transfer_id: m.transfer_id,
            },
        )?;
        Ok(Outcome::Applied)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferStatus {
    Applied,
    Receipted,
}

impl Status for TransferStatus {
    fn rank(self) -> u8 {
        match self {
            TransferStatus::Applied => 0,
            TransferStatus::Receipted => 1,
        }
    }
    fn is_terminal(self) -> bool {
        self == TransferStatus::Receipted
    }
}

pub struct ReceiptStage;

impl Stage for ReceiptStage {
    type Message = Receipt;

    fn name(&self) -> &str {
        RECEIPT_STAGE
    }

    fn decode(&self, inbound: &Inbound) -> Result<Receipt, Undecodable> {
        serde_json::from_slice(&inbound.body).map_err(|e| Undecodable::json(inbound, "receipt", e))
    }

    fn lock_key(&self, message: &Receipt) -> Option<String> {
        Some(message.transfer_id.to_string())
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        m: &Receipt,
    ) -> Result<Outcome, StageError> {
        let moved = sqlx::query(
            "UPDATE probe_transfers SET status = 'receipted' WHERE id = $1 AND status = 'applied'",
        )
        .bind(m.transfer_id)
        .execute(tx.conn())
        .await?;
        if moved.rows_affected() == 0 {
            let found: Option<String> =
                sqlx::query_scalar("SELECT status FROM probe_transfers WHERE id = $1")
                    .bind(m.transfer_id)
                    .fetch_optional(tx.conn())
                    .await?;
            let found = found.map(|s| {
                if s == "applied" {
                    TransferStatus::Applied
                } else {
                    TransferStatus::Receipted
                }
            });
            let miss =
                transition::classify(found, TransferStatus::Applied, TransferStatus::Receipted);
            return Ok(miss.outcome(format!("receipt for transfer {}", m.transfer_id)));
        }
        sqlx::query("INSERT INTO probe_receipts (transfer_id, message_id) VALUES ($1, $2)")
            .bind(m.transfer_id)
            .bind(&inbound.message_id)
            .execute(tx.conn())
            .await?;
        Ok(Outcome::Applied)
    }
}
