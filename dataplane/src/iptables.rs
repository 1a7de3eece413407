//! `skein-proxy init-iptables`: the NAT rules that send a pod's TCP through its sidecar, as
//! Istio's init container installs them. Inbound TCP is redirected to the inbound capture port
//! (15006) except excluded ports (the proxy's own status and metrics ports); outbound TCP is
//! redirected to 15001 except the proxy's own traffic (by uid/gid, so it never loops) and
//! loopback. With `--redirect-dns-port`, DNS queries (UDP and TCP port 53) to the pod's
//! nameservers (from its resolv.conf, as Istio's default) go to the proxy's DNS server instead,
//! except the proxy's own. The rules are applied in one `iptables-restore --noflush`
//! transaction.

use std::{io::Write, process::Command};

/// What to install.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureRules {
    /// Port of the outbound capture listener.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Port of the inbound capture listener.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The proxy's uid: its own connections are never redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's gid (same reason).
    #[arg(long, default_value_t = 1337)]
    pub proxy_gid: u32,
    /// Inbound ports left alone (the proxy's status and metrics ports, Istio's 15020/15021/15090).
    #[arg(long, value_delimiter = ',', default_value = "15020,15021,15090")]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,
    /// Redirect the pod's DNS queries to its nameservers to this local port (the proxy's DNS
    /// proxy). Unset: DNS is not captured.
    #[arg(long)]
    pub redirect_dns_port: Option<u16>,
    /// The resolv.conf whose nameservers are captured (the pod's own).
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: std::path::PathBuf,
}

impl CaptureRules {
    /// The `iptables-restore` input; `nameservers` are the addresses whose DNS is captured
    /// (used with `redirect_dns_port` only).
    pub fn render(&self, nameservers: &[std::net::IpAddr]) -> String {
        let dns = self.redirect_dns_port.filter(|_| !nameservers.is_empty());
        let mut r = String::from("*nat\n");
        for chain in ["SKEIN_INBOUND", "SKEIN_IN_REDIRECT", "SKEIN_OUTPUT", "SKEIN_REDIRECT"] {
            r += &format!(":{chain} - [0:0]\n");
        }
        if dns.is_some() {
            r += ":SKEIN_DNS - [0:0]\n";
        }
        r += "-A PREROUTING -p tcp -j SKEIN_INBOUND\n";
        if let Some(port) = dns {
            // UDP DNS is not otherwise captured: its own chain, the proxy's queries excepted.
            r += "-A OUTPUT -p udp --dport 53 -j SKEIN_DNS\n";
            r += &format!("-A SKEIN_DNS -m owner --uid-owner {} -j RETURN\n", self.proxy_uid);
            r += &format!("-A SKEIN_DNS -m owner --gid-owner {} -j RETURN\n", self.proxy_gid);
            for ns in nameservers {
                r += &format!("-A SKEIN_DNS -d {ns} -p udp --dport 53 -j REDIRECT --to-ports {port}\n");
            }
        }
        r += "-A OUTPUT -p tcp -j SKEIN_OUTPUT\n";
        for p in &self.exclude_inbound_ports {
            r += &format!("-A SKEIN_INBOUND -p tcp --dport {p} -j RETURN\n");
        }
        r += "-A SKEIN_INBOUND -p tcp -j SKEIN_IN_REDIRECT\n";
        r += &format!("-A SKEIN_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n", self.inbound_port);
        r += &format!("-A SKEIN_OUTPUT -m owner --uid-owner {} -j RETURN\n", self.proxy_uid);
        r += &format!("-A SKEIN_OUTPUT -m owner --gid-owner {} -j RETURN\n", self.proxy_gid);
        r += "-A SKEIN_OUTPUT -o lo -j RETURN\n";
        if let Some(port) = dns {
            for ns in nameservers {
                r += &format!("-A SKEIN_OUTPUT -d {ns} -p tcp --dport 53 -j REDIRECT --to-ports {port}\n");
            }
        }
        for cidr in &self.exclude_outbound_cidrs {
            r += &format!("-A SKEIN_OUTPUT -d {cidr} -j RETURN\n");
        }
        r += "-A SKEIN_OUTPUT -j SKEIN_REDIRECT\n";
        r += &format!("-A SKEIN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n", self.outbound_port);
        r += "COMMIT\n";
        r
    }

    /// Checks values `iptables` would otherwise receive verbatim.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.exclude_outbound_cidrs {
            c.parse::<std::net::IpAddr>()
                .map(|_| ())
                .or_else(|_| {
                    let (ip, len) = c.split_once('/').ok_or(())?;
                    let ip: std::net::IpAddr = ip.parse().map_err(|_| ())?;
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    len.parse::<u8>().ok().filter(|l| *l <= max).map(|_| ()).ok_or(())
                })
                .map_err(|_| format!("--exclude-outbound-cidrs: {c:?} is not an address or CIDR"))?;
        }
        Ok(())
    }

    /// The nameservers whose DNS is captured: those of `resolv_conf` when DNS is redirected.
    /// Refuses to go on without any, since the DNS proxy would then be bypassed silently.
    pub fn nameservers(&self) -> Result<Vec<std::net::IpAddr>, String> {
        if self.redirect_dns_port.is_none() {
            return Ok(Vec::new());
        }
        let up = crate::dns::server::Upstream::read(&self.resolv_conf).map_err(|e| format!("--resolv-conf: {e}"))?;
        Ok(up.nameservers.iter().map(|s| s.ip()).collect())
    }

    /// Installs the rules with `iptables-restore --noflush`.
    pub fn apply(&self) -> Result<(), String> {
        self.validate()?;
        let nameservers = self.nameservers()?;
        let mut child = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("run iptables-restore: {e}"))?;
        child
            .stdin
            .take()
            .ok_or("iptables-restore: no stdin")?
            .write_all(self.render(&nameservers).as_bytes())
            .map_err(|e| format!("write rules: {e}"))?;
        let status = child.wait().map_err(|e| format!("iptables-restore: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("iptables-restore failed: {status}")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> CaptureRules {
        CaptureRules {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: 1337,
            proxy_gid: 1337,
            exclude_inbound_ports: vec![15021, 15090],
            exclude_outbound_cidrs: vec!["10.96.0.1/32".into()],
            redirect_dns_port: None,
            resolv_conf: "/etc/resolv.conf".into(),
        }
    }

    #[test]
    fn rules_exclude_the_proxy_itself_before_redirecting() {
        let r = rules().render(&["10.96.0.10".parse().unwrap()]);
        assert!(!r.contains("53"), "no DNS capture unless asked:\n{r}");
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("{s} missing:\n{r}"));
        assert!(pos("--uid-owner 1337 -j RETURN") < pos("-A SKEIN_OUTPUT -j SKEIN_REDIRECT"));
        assert!(pos("--dport 15021 -j RETURN") < pos("-A SKEIN_INBOUND -p tcp -j SKEIN_IN_REDIRECT"));
        assert!(pos("-d 10.96.0.1/32 -j RETURN") < pos("-A SKEIN_OUTPUT -j SKEIN_REDIRECT"));
        assert!(r.contains("REDIRECT --to-ports 15006\n") && r.contains("REDIRECT --to-ports 15001\n"));
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
    }

    #[test]
    fn dns_to_the_pods_nameservers_goes_to_the_dns_proxy_except_the_proxys_own() {
        let mut rules = rules();
        rules.redirect_dns_port = Some(15053);
        let r = rules.render(&["10.96.0.10".parse().unwrap()]);
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("{s} missing:\n{r}"));
        assert!(r.contains(":SKEIN_DNS - [0:0]\n") && r.contains("-A OUTPUT -p udp --dport 53 -j SKEIN_DNS\n"));
        let udp = pos("-A SKEIN_DNS -d 10.96.0.10 -p udp --dport 53 -j REDIRECT --to-ports 15053\n");
        assert!(pos("-A SKEIN_DNS -m owner --uid-owner 1337 -j RETURN") < udp);
        assert!(pos("-A SKEIN_DNS -m owner --gid-owner 1337 -j RETURN") < udp);
        let tcp = pos("-A SKEIN_OUTPUT -d 10.96.0.10 -p tcp --dport 53 -j REDIRECT --to-ports 15053\n");
        assert!(pos("--uid-owner 1337 -j RETURN") < tcp && tcp < pos("-A SKEIN_OUTPUT -j SKEIN_REDIRECT"));
        // No nameserver known: nothing to capture (never a rule without a destination).
        assert!(!rules.render(&[]).contains("SKEIN_DNS"));
    }

    #[test]
    fn the_nameservers_come_from_the_pods_resolv_conf_and_none_is_an_error() {
        let dir = std::env::temp_dir().join(format!("skein-iptables-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rules = rules();
        assert_eq!(rules.nameservers().unwrap(), Vec::<std::net::IpAddr>::new(), "not asked: not read");
        rules.redirect_dns_port = Some(15053);
        rules.resolv_conf = dir.join("resolv.conf");
        std::fs::write(&rules.resolv_conf, "search default.svc.cluster.local\nnameserver 10.96.0.10\n").unwrap();
        assert_eq!(rules.nameservers().unwrap(), vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]);
        std::fs::write(&rules.resolv_conf, "").unwrap();
        assert!(rules.nameservers().unwrap_err().contains("no nameserver"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bad_cidr_is_refused_naming_the_flag() {
        let mut r = rules();
        r.exclude_outbound_cidrs = vec!["10.0.0.0/33".into()];
        assert_eq!(r.validate().unwrap_err(), r#"--exclude-outbound-cidrs: "10.0.0.0/33" is not an address or CIDR"#);
        r.exclude_outbound_cidrs = vec!["-j ACCEPT".into()];
        assert!(r.validate().is_err());
        r.exclude_outbound_cidrs = vec!["fd00::/8".into(), "10.1.2.3".into()];
        assert!(r.validate().is_ok());
    }
}
