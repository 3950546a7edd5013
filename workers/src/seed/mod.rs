//! The one seeder of catalogues: merchants, users with their wallets,
//! products with their stock and price tiers, coupons and channels, each
//! described as a typed row and written by one statement per row kind
//! (set-based, so a catalogue of thousands is written at once). The demo,
//! the benchmark and the tests describe their catalogues with it.
//!
//! Writing is idempotent: a row that exists is left as it is, except what
//! is brought up to date — a merchant's notify URL, a channel's routing,
//! a product's name, price, currency, status, spec and warehouse (of the
//! same seller) and its tiers' prices; stock is topped up to at least what
//! is described, an issued coupon keeps its terms, and a wallet's top-up
//! is a journal entry under its reference, written once.
//!
//! There is one way to create a merchant, a payer, a channel or a product:
//! these writers. The onboarding commands (`payfleet merchant add`,
//! `user add`, `channel add`, `catalogue import`) write through them too,
//! adding their checks and their audit; the writers say which rows they
//! created, so a command refuses what already exists.

use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};

mod write;

pub use crate::stages::order_validation::pricing::{CouponRule, LadderStep};
pub(crate) use write::coupon_columns;
pub use write::{channels, coupons, merchants, products, users};

/// A merchant: a shop that sends requests (signed with `signing_key`) or
/// a seller whose sales it is paid for, less its fee. Its webhook secret is
/// made by the database when it is first written.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: String,
    pub name: String,
    pub signing_key: String,
    pub fee_rate: Decimal,
    pub notify_url: Option<String>,
    pub notify_hosts: Vec<String>,
    /// May ask to move users' wallets (withdrawals): the platform's wallet
    /// application, never a merchant selling goods.
    pub acts_for_users: bool,
    /// The bank account its settled balance is paid out to, as the payout
    /// channel tokenised it; none: it is never paid out.
    pub payout_account: Option<String>,
}

/// A merchant `id` whose requests are signed with `signing_key`; named
/// after its id, no fee, no webhook URL, acting for no user.
pub fn merchant(id: &str, signing_key: &str) -> Merchant {
    Merchant {
        id: id.to_owned(),
        name: id.to_owned(),
        signing_key: signing_key.to_owned(),
        fee_rate: Decimal::ZERO,
        notify_url: None,
        notify_hosts: Vec::new(),
        acts_for_users: false,
        payout_account: None,
    }
}

impl Merchant {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// The platform's fee on this seller's sales, e.g. 0.0060 = 0.6 %.
    pub fn fee_rate(mut self, rate: Decimal) -> Self {
        self.fee_rate = rate;
        self
    }

    /// Where its payment webhooks go.
    pub fn notify_url(mut self, url: &str) -> Self {
        self.notify_url = Some(url.to_owned());
        self
    }

    /// May ask to move users' wallets (the platform's wallet application).
    pub fn acts_for_users(mut self) -> Self {
        self.acts_for_users = true;
        self
    }

    /// The bank account its settled balance is paid out to.
    pub fn payout_account(mut self, account: &str) -> Self {
        self.payout_account = Some(account.to_owned());
        self
    }

    /// Hosts a request's own notify URL may name.
    pub fn notify_hosts(mut self, hosts: &[&str]) -> Self {
        self.notify_hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        self
    }
}

/// A user, with the top-ups of its wallets.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub blocked: bool,
    pub top_ups: Vec<TopUp>,
}

/// Money put into a user's wallet from outside, through the books.
#[derive(Debug, Clone)]
pub struct TopUp {
    pub currency: String,
    pub amount: Decimal,
    /// The journal entry's reference: a top-up is written once per reference.
    pub reference: String,
}

/// A user `id`, named after its id, with no wallet yet.
pub fn user(id: &str) -> User {
    User {
        id: id.to_owned(),
        name: id.to_owned(),
        blocked: false,
        top_ups: Vec::new(),
    }
}

impl User {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// On the risk block list.
    pub fn blocked(mut self, blocked: bool) -> Self {
        self.blocked = blocked;
        self
    }

    /// A wallet in `currency` topped up with `amount` (journal entry `reference`).
    pub fn wallet(mut self, currency: &str, amount: Decimal, reference: &str) -> Self {
        self.top_ups.push(TopUp {
            currency: currency.to_owned(),
            amount,
            reference: reference.to_owned(),
        });
        self
    }
}

/// A product (SKU) of a seller, with the stock it has and its price tiers.
#[derive(Debug, Clone)]
pub struct Product {
    pub sku: String,
    pub merchant_id: String,
    pub name: String,
    pub spec: Option<serde_json::Value>,
    pub warehouse: Option<String>,
    pub unit_price: Decimal,
    pub currency: String,
    pub on_sale: bool,
    /// Units available (topped up to at least this many); none when 0.
    pub stock: i32,
    /// (from this many units on, each unit's price)
    pub tiers: Vec<(i32, Decimal)>,
}

/// SKU `sku` of seller `merchant_id` at `unit_price` CNY, on sale, named
/// after its SKU, in the default warehouse, with no stock.
pub fn product(sku: &str, merchant_id: &str, unit_price: Decimal) -> Product {
    Product {
        sku: sku.to_owned(),
        merchant_id: merchant_id.to_owned(),
        name: sku.to_owned(),
        spec: None,
        warehouse: None,
        unit_price,
        currency: "CNY".to_owned(),
        on_sale: true,
        stock: 0,
        tiers: Vec::new(),
    }
}

impl Product {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    pub fn spec(mut self, spec: serde_json::Value) -> Self {
        self.spec = Some(spec);
        self
    }

    pub fn warehouse(mut self, warehouse: &str) -> Self {
        self.warehouse = Some(warehouse.to_owned());
        self
    }

    pub fn currency(mut self, currency: &str) -> Self {
        self.currency = currency.to_owned();
        self
    }

    pub fn stock(mut self, units: i32) -> Self {
        self.stock = units;
        self
    }

    pub fn off_shelf(mut self) -> Self {
        self.on_sale = false;
        self
    }

    /// From `min_quantity` units on, each unit costs `unit_price`.
    pub fn tier(mut self, min_quantity: i32, unit_price: Decimal) -> Self {
        self.tiers.push((min_quantity, unit_price));
        self
    }
}

/// A coupon, valid from `valid_from` to `valid_until`.
#[derive(Debug, Clone)]
pub struct Coupon {
    pub code: String,
    pub rule: CouponRule,
    pub currency: String,
    pub valid_from: chrono::DateTime<chrono::Utc>,
    pub valid_until: chrono::DateTime<chrono::Utc>,
    pub total_limit: i32,
    pub per_user_limit: i32,
}

const DAY_S: i64 = 86_400;

/// Coupon `code` in CNY, valid from a day ago for `days` days more, used at
/// most once per user and 100 times in all.
pub fn coupon(code: &str, rule: CouponRule) -> Coupon {
    Coupon {
        code: code.to_owned(),
        rule,
        currency: "CNY".to_owned(),
        valid_from: chrono::Utc::now() - chrono::Duration::seconds(DAY_S),
        valid_until: chrono::Utc::now() + chrono::Duration::seconds(DAY_S),
        total_limit: 100,
        per_user_limit: 1,
    }
}

impl Coupon {
    /// Valid from `from_days` to `until_days` days from now (negative: ago).
    pub fn valid_days(mut self, from_days: i64, until_days: i64) -> Self {
        let now = chrono::Utc::now();
        self.valid_from = now + chrono::Duration::seconds(from_days * DAY_S);
        self.valid_until = now + chrono::Duration::seconds(until_days * DAY_S);
        self
    }

    /// At most `total` uses in all and `per_user` per user.
    pub fn limits(mut self, total: i32, per_user: i32) -> Self {
        self.total_limit = total;
        self.per_user_limit = per_user;
        self
    }
}

/// A channel of the routing table: a sandbox one at `base_url`, whose
/// webhooks are signed with `webhook_secret`.
#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    pub base_url: String,
    pub webhook_secret: String,
    pub methods: Vec<String>,
    pub fee_rate: Decimal,
    /// The time of day (business zone) after which it reverses nothing
    /// paid that day; none: it does not reverse.
    pub reversal_cutoff: Option<chrono::NaiveTime>,
}

impl Channel {
    /// Reverses the day's payments until `cutoff` (in the business zone).
    pub fn reversal_cutoff(mut self, cutoff: Option<chrono::NaiveTime>) -> Self {
        self.reversal_cutoff = cutoff;
        self
    }
}

/// Sandbox channel `name` at `base_url` for `methods`, charging `fee_rate`.
pub fn sandbox_channel(
    name: &str,
    base_url: &str,
    webhook_secret: &str,
    methods: &[&str],
    fee_rate: Decimal,
) -> Channel {
    Channel {
        name: name.to_owned(),
        base_url: base_url.to_owned(),
        webhook_secret: webhook_secret.to_owned(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        fee_rate,
        reversal_cutoff: None,
    }
}

/// A whole catalogue, written in one transaction by [`Catalogue::seed`].
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub merchants: Vec<Merchant>,
    pub users: Vec<User>,
    pub products: Vec<Product>,
    pub coupons: Vec<Coupon>,
    pub channels: Vec<Channel>,
}

impl Catalogue {
    /// Writes every row in one transaction.
    pub async fn seed(&self, pool: &PgPool) -> anyhow::Result<()> {
        let mut tx = pool.begin().await?;
        self.write(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes every row on `conn` (merchants before the products they sell).
    pub async fn write(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        merchants(conn, &self.merchants).await?;
        users(conn, &self.users).await?;
        products(conn, &self.products).await?;
        coupons(conn, &self.coupons).await?;
        channels(conn, &self.channels).await?;
        Ok(())
    }
}
