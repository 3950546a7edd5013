//! `rabbitmqctl`, the broker's own CLI: present wherever the broker is,
//! unlike the management plugin, which stays off. Vhosts for tests and
//! benchmarks are made and removed with it.

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "running rabbitmqctl (it comes with the RabbitMQ server, so this must run where the broker runs): {0}"
    )]
    Spawn(#[from] std::io::Error),
    #[error("rabbitmqctl {args}: {stderr}")]
    Failed { args: String, stderr: String },
}

/// Runs `rabbitmqctl ARGS -q` and returns its standard output.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String, CtlError> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .arg("-q")
        .output()
        .await?;
    if !output.status.success() {
        return Err(CtlError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
