//! Where a merchant webhook may go: deny by default. A target must be an
//! http(s) URL whose host the merchant registered (`merchants.notify_hosts`
//! or the host of its own `notify_url`), and every address it is sent to
//! must be public: loopback (unless `webhook_allow_loopback`, for the demo
//! and tests), private, shared, link-local (cloud metadata 169.254.169.254),
//! unique-local, unspecified, multicast and broadcast addresses are refused.
//! The address check runs inside the HTTP client's own DNS resolution, so a
//! name that resolves differently on the second lookup cannot slip through;
//! IP literals (which skip resolution) are checked before the request.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use payfleet_common::tls::ExtraCa;
use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

/// Marks a refusal in an error chain (permanent: not retried).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// Whether a webhook may be sent to this address.
pub fn address_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(v4, allow_loopback),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_allowed(v4, allow_loopback),
            None => v6_allowed(v6, allow_loopback),
        },
    }
}

fn v4_allowed(ip: Ipv4Addr, allow_loopback: bool) -> bool {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        return allow_loopback;
    }
    !(ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || a == 0
        || ip.is_multicast()
        || ip.is_broadcast()
        || a >= 240
        // shared address space (carrier-grade NAT), 100.64.0.0/10
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24
        || (a == 192 && b == 0 && ip.octets()[2] == 0))
}

fn v6_allowed(ip: Ipv6Addr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return allow_loopback;
    }
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_multicast()
        // unique-local fc00::/7
        || (first & 0xfe00) == 0xfc00
        // link-local fe80::/10
        || (first & 0xffc0) == 0xfe80
        // site-local (deprecated) fec0::/10
        || (first & 0xffc0) == 0xfec0
        // IPv4-compatible ::a.b.c.d and NAT64 64:ff9b::/96 reach v4 space
        || ip.segments()[..6] == [0; 6]
        || ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
}

/// Checks a delivery's URL against the merchant's registered hosts and, for
/// an IP literal, the address rules. Returns the URL to send to.
pub fn check(
    url: &str,
    registered: &[String],
    merchant_url: Option<&str>,
    allow_loopback: bool,
) -> Result<Url, Refused> {
    let parsed = Url::parse(url).map_err(|e| Refused(format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Refused(format!(
            "scheme `{}` is not http(s)",
            parsed.scheme()
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused("credentials in the URL".into()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Refused("no host".into()))?
        .to_ascii_lowercase();
    let merchant_host = merchant_url
        .and_then(|u| Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let is_registered = registered.iter().any(|r| r.eq_ignore_ascii_case(&host))
        || merchant_host.as_deref() == Some(host.as_str());
    if !is_registered {
        return Err(Refused(format!(
            "host {host} is not registered for the merchant"
        )));
    }
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    if let Ok(ip) = literal {
        if !address_allowed(ip, allow_loopback) {
            return Err(Refused(format!("address {ip} is not public")));
        }
    }
    Ok(parsed)
}

/// The webhook client's resolver: the system's, keeping only allowed addresses.
struct GuardedResolver {
    allow_loopback: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| address_allowed(a.ip(), allow_loopback))
                .collect();
            if allowed.is_empty() {
                let all: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
                return Err(Box::new(Refused(format!(
                    "{host} resolves to no public address ({})",
                    all.join(", ")
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for merchant webhooks: addresses checked in its own DNS
/// resolution, no redirects followed, no proxy.
/// https receivers are verified against the platform's roots and `extra_ca`.
pub fn client(
    timeout: Duration,
    allow_loopback: bool,
    extra_ca: &ExtraCa,
) -> reqwest::Result<reqwest::Client> {
    extra_ca
        .trusted_by(reqwest::Client::builder())?
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow_loopback }))
        .build()
}

/// The refusal in a send error's chain, if the resolver refused.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.to_string());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_allowed() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!address_allowed(ip.parse().unwrap(), false), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(address_allowed(ip.parse().unwrap(), false), "{ip}");
        }
        assert!(address_allowed("127.0.0.1".parse().unwrap(), true));
        assert!(address_allowed("::1".parse().unwrap(), true));
        assert!(!address_allowed("10.0.0.1".parse().unwrap(), true));
    }

    /// A listener that answers 200 to every request and counts connections.
    async fn counting_listener() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        (addr, count)
    }

    /// Proxy variables are ignored. Runs itself again as a child process
    /// that sets `HTTP_PROXY` and `ALL_PROXY`, so no other test sees them; a
    /// client with a proxy does reach the proxy (the check is not vacuous).
    #[tokio::test]
    async fn the_webhook_client_uses_no_proxy() {
        use std::sync::atomic::Ordering::SeqCst;
        const CHILD: &str = "PAYFLEET_TEST_PROXY_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let output = tokio::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "stages::notification::webhook_target::tests::the_webhook_client_uses_no_proxy",
                    "--exact",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .output()
                .await
                .unwrap();
            let out = String::from_utf8_lossy(&output.stdout);
            let err = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{out}{err}");
            assert!(out.contains("1 passed"), "{out}");
            return;
        }
        let (direct, direct_count) = counting_listener().await;
        let (proxy, proxy_count) = counting_listener().await;
        let proxy_url = format!("http://{proxy}");
        // SAFETY: this child process runs this one test only.
        unsafe {
            for name in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
                std::env::set_var(name, &proxy_url);
            }
        }
        let url = format!("http://{direct}/hook");
        // Control: a client that honours the proxy variables goes to the proxy.
        let plain = reqwest::Client::builder().build().unwrap();
        let _ = plain.post(&url).body("x").send().await;
        assert_eq!(
            proxy_count.load(SeqCst),
            1,
            "the control went through the proxy"
        );
        let guarded = client(Duration::from_secs(5), true, &ExtraCa::default()).unwrap();
        let response = guarded.post(&url).body("x").send().await.unwrap();
        assert!(response.status().is_success());
        assert_eq!(direct_count.load(SeqCst), 1, "sent directly");
        assert_eq!(proxy_count.load(SeqCst), 1, "not through the proxy");
    }

    #[test]
    fn a_target_must_be_a_registered_http_host() {
        let hosts = vec!["shop.example".to_owned()];
        assert!(check("https://shop.example/hook", &hosts, None, false).is_ok());
        assert!(check("https://SHOP.example/hook", &hosts, None, false).is_ok());
        assert!(check("https://other.example/hook", &hosts, None, false).is_err());
        assert!(
            check(
                "https://m.example/h",
                &[],
                Some("https://m.example/x"),
                false
            )
            .is_ok()
        );
        assert!(check("file:///etc/passwd", &hosts, None, false).is_err());
        assert!(check("javascript:alert(1)", &hosts, None, false).is_err());
        assert!(check("https://u:p@shop.example/", &hosts, None, false).is_err());
        let literal = vec!["127.0.0.1".to_owned()];
        assert!(check("http://127.0.0.1:1/", &literal, None, false).is_err());
        assert!(check("http://127.0.0.1:1/", &literal, None, true).is_ok());
    }
}
