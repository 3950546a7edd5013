//! The RabbitMQ user upstream systems publish with. Its only permission is
//! to write to the ingress exchange: configure and read match nothing, and
//! write matches the ingress exchange's name alone, so it cannot publish to
//! `payfleet.stages`, the retry or dead-letter exchanges, the default
//! exchange, or `payfleet.events`, nor declare, bind or consume anything.
//! Status requests go through the ingress exchange too, and RabbitMQ's
//! direct reply-to (`amq.rabbitmq.reply-to`) needs no permission, so the
//! user can ask where its payments stand without any further right.
//! The management plugin stays off: `rabbitmqctl` does the work.

use anyhow::{Context, bail};

/// One upstream user on one vhost.
pub struct UpstreamUser {
    pub user: String,
    pub vhost: String,
    pub ingress_exchange: String,
}

/// `^name$` with the name's regex metacharacters escaped.
pub fn exact(name: &str) -> String {
    let mut out = String::from("^");
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('$');
    out
}

/// A command as one shell line, each argument single-quoted.
pub fn shell_line(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i < 2 || a == "-p" {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

impl UpstreamUser {
    pub fn new(user: &str, vhost: &str, ingress_exchange: &str) -> Self {
        Self {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            ingress_exchange: ingress_exchange.to_owned(),
        }
    }

    /// (configure, write, read) permission regexes.
    pub fn permissions(&self) -> [String; 3] {
        [
            "^$".to_owned(),
            exact(&self.ingress_exchange),
            "^$".to_owned(),
        ]
    }

    /// The rabbitmqctl commands that make the user, in order.
    pub fn commands(&self, password: &str) -> Vec<Vec<String>> {
        let [configure, write, read] = self.permissions();
        vec![
            vec![
                "rabbitmqctl".into(),
                "add_user".into(),
                self.user.clone(),
                password.to_owned(),
            ],
            vec![
                "rabbitmqctl".into(),
                "set_permissions".into(),
                "-p".into(),
                self.vhost.clone(),
                self.user.clone(),
                configure,
                write,
                read,
            ],
        ]
    }

    /// Runs the commands with the local rabbitmqctl; an existing user gets
    /// the password and the permissions anew. Returns what was done.
    pub fn create(&self, password: &str) -> anyhow::Result<Vec<String>> {
        let run = |args: &[String]| {
            std::process::Command::new(&args[0])
                .args(&args[1..])
                .output()
                .context("running rabbitmqctl (it comes with the RabbitMQ server)")
        };
        let mut done = Vec::new();
        let [add, permissions] = <[Vec<String>; 2]>::try_from(self.commands(password))
            .map_err(|_| anyhow::anyhow!("two commands"))?;
        let added = run(&add)?;
        if added.status.success() {
            done.push(format!("created user {}", self.user));
        } else {
            let error = String::from_utf8_lossy(&added.stderr);
            if !error.contains("already exists") && !error.contains("user_already_exists") {
                bail!("rabbitmqctl add_user {}: {}", self.user, error.trim());
            }
            let changed = run(&[
                "rabbitmqctl".into(),
                "change_password".into(),
                self.user.clone(),
                password.to_owned(),
            ])?;
            if !changed.status.success() {
                bail!(
                    "rabbitmqctl change_password {}: {}",
                    self.user,
                    String::from_utf8_lossy(&changed.stderr).trim()
                );
            }
            done.push(format!("user {} already present; password set", self.user));
        }
        let set = run(&permissions)?;
        if !set.status.success() {
            bail!(
                "rabbitmqctl set_permissions: {}",
                String::from_utf8_lossy(&set.stderr).trim()
            );
        }
        let [configure, write, read] = self.permissions();
        done.push(format!(
            "vhost {}: {} may configure {configure}, write {write}, read {read}",
            self.vhost, self.user
        ));
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_may_write_to_the_ingress_exchange_only() {
        let user = UpstreamUser::new("up", "payfleet", "payfleet.ingress");
        assert_eq!(
            user.permissions(),
            ["^$", r"^payfleet\.ingress$", "^$"].map(str::to_owned)
        );
        assert_eq!(
            shell_line(&user.commands("pw")[1]),
            r"rabbitmqctl set_permissions -p 'payfleet' 'up' '^$' '^payfleet\.ingress$' '^$'"
        );
        assert_eq!(
            shell_line(&user.commands("it's")[0]),
            r"rabbitmqctl add_user 'up' 'it'\''s'"
        );
    }
}
