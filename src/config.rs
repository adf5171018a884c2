//! The relay's configuration: an embedded default, optionally overridden by a TOML file, then by
//! command-line flags.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;

/// The built-in configuration, also shown by `--print-default-config`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Parser)]
#[command(
    name = "rtprelay",
    version,
    about = "Carrier-grade thread-per-core RTP media relay"
)]
pub struct Cli {
    /// TOML configuration file; its keys override the built-in defaults.
    #[arg(short, long, env = "RTPRELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC control API address.
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// Number of shards (0 = one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Default local media address.
    #[arg(long)]
    pub media_address: Option<IpAddr>,
    /// Lowest media port.
    #[arg(long)]
    pub port_min: Option<u16>,
    /// Highest media port.
    #[arg(long)]
    pub port_max: Option<u16>,
    /// Log level or filter (e.g. "debug", "info,rtprelay_dataplane=trace").
    #[arg(long)]
    pub log_level: Option<String>,
    /// Do not pin shards to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Do not bind media sockets to the interface owning their address.
    #[arg(long)]
    pub no_bind_device: bool,
    /// DSCP of outbound media (0-63).
    #[arg(long)]
    pub dscp: Option<u8>,
    /// Accept listen/connect addresses no local interface owns (IP_FREEBIND).
    #[arg(long)]
    pub allow_nonlocal: bool,
    /// Serve the rtpproxy control protocol here (udp:IP:PORT or udp6:[IP]:PORT; repeatable).
    #[arg(long)]
    pub rtpproxy_listen: Vec<String>,
    /// Directory rtpproxy `R` writes pcap recordings into (empty: recording disabled).
    #[arg(long)]
    pub record_dir: Option<PathBuf>,
    /// Print the built-in configuration and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub interfaces: Vec<Interface>,
    pub control: Control,
    pub media: Media,
    pub dataplane: Dataplane,
    pub sessions: Sessions,
    pub rtpproxy: Rtpproxy,
    pub events: Events,
    pub log: Log,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub address: IpAddr,
    pub advertised: Option<IpAddr>,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub dscp: Option<u8>,
}

impl Interface {
    /// The data plane's view, with the port range checked.
    pub fn media(&self) -> anyhow::Result<rtprelay_dataplane::config::MediaInterface> {
        let ports = match (self.port_min, self.port_max) {
            (Some(lo), Some(hi)) => Some(
                rtprelay_dataplane::ports::PortRange::new(lo, hi)
                    .with_context(|| format!("interface {:?}", self.name))?,
            ),
            (None, None) => None,
            _ => bail!(
                "interface {:?}: give both port_min and port_max, or neither",
                self.name
            ),
        };
        if self.dscp.is_some_and(|d| d > 63) {
            bail!("interface {:?}: dscp is out of range 0-63", self.name);
        }
        Ok(rtprelay_dataplane::config::MediaInterface {
            name: self.name.clone(),
            address: self.address,
            advertised: self.advertised,
            ports,
            dscp: self.dscp,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub grpc_listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    pub address: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    pub bind_device: bool,
    pub dscp: u8,
    pub allow_nonlocal: bool,
    pub socket_rcvbuf: usize,
    pub max_packet_age_ms: u64,
    pub connect_destination: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    pub shards: usize,
    pub pin_cores: bool,
    pub buffers_per_shard: u16,
    pub max_sockets_per_shard: u32,
    pub sq_entries: u32,
    pub preempt_ms: u64,
    pub budget: usize,
    pub task_run: TaskRun,
    pub batch_packets: usize,
    pub batch_max_wait_us: u64,
    pub batch_min_wait_us: u64,
    pub batch_min_rate_pps: u64,
    pub linger_ms: u64,
    pub busy_poll_us: u64,
}

/// When the kernel runs receive completion work (see `rtprelay_dataplane::io::uring::TaskRun`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskRun {
    Immediate,
    Coop,
    Defer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    pub stats_interval_ms: u32,
    pub idle_timeout_ms: u32,
    pub alert_loss_pct: f64,
    pub alert_loss_window_ms: u32,
    pub alert_jitter_ms: f64,
    pub alert_no_media_ms: u32,
}

impl Sessions {
    pub fn defaults(&self) -> rtprelay_control::validate::SessionDefaults {
        rtprelay_control::validate::SessionDefaults {
            stats_interval_ms: self.stats_interval_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            loss_pct: self.alert_loss_pct,
            loss_window_ms: self.alert_loss_window_ms,
            jitter_ms: self.alert_jitter_ms,
            no_media_ms: self.alert_no_media_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rtpproxy {
    pub listen: Vec<String>,
    pub allow: Vec<IpAddr>,
    pub ttl_s: u64,
    pub notify: Vec<String>,
    /// Where `R` writes pcap files; empty disables recording.
    #[serde(default)]
    pub record_dir: PathBuf,
    /// rtpproxy's bridge mode (`-l internal/external`): the local addresses the `i` and `e`
    /// modifiers bind a leg to. Both or neither.
    #[serde(default)]
    pub internal: Option<IpAddr>,
    #[serde(default)]
    pub external: Option<IpAddr>,
}

impl Rtpproxy {
    /// The bridged networks, when both addresses are configured.
    pub fn bridge(
        &self,
    ) -> anyhow::Result<Option<rtprelay_control::rtpproxy::bridge::BridgeAddresses>> {
        match (self.internal, self.external) {
            (Some(internal), Some(external)) => {
                Ok(Some(rtprelay_control::rtpproxy::bridge::BridgeAddresses {
                    internal,
                    external,
                }))
            }
            (None, None) => Ok(None),
            _ => bail!("rtpproxy.internal and rtpproxy.external: give both, or neither"),
        }
    }

    /// Unix stream socket paths to listen on, from `unix:/path`.
    pub fn unix_paths(&self) -> Vec<PathBuf> {
        self.listen
            .iter()
            .filter_map(|spec| spec.strip_prefix("unix:").map(PathBuf::from))
            .collect()
    }

    /// The UDP addresses to listen on, from `udp:IP:PORT` / `udp6:[IP]:PORT`.
    pub fn udp_addresses(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.listen
            .iter()
            .filter(|spec| !spec.starts_with("unix:"))
            .map(|spec| {
                let addr = spec
                    .strip_prefix("udp6:")
                    .or_else(|| spec.strip_prefix("udp:"))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "rtpproxy.listen {spec:?}: use udp:IP:PORT, udp6:[IP]:PORT or unix:/path"
                        )
                    })?;
                addr.parse::<SocketAddr>()
                    .with_context(|| format!("rtpproxy.listen {spec:?} is not udp:IP:PORT"))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    pub buffer: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

/// Overlays `over` onto `base`, key by key (tables merge, everything else is replaced).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

impl Config {
    /// The built-in defaults overlaid with `file` (TOML text), if any.
    pub fn from_toml(file: Option<&str>) -> anyhow::Result<Self> {
        let mut table: toml::Table = DEFAULT_TOML.parse().context("built-in configuration")?;
        if let Some(text) = file {
            let over: toml::Table = text
                .parse()
                .context("configuration file is not valid TOML")?;
            merge(&mut table, over);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .context("configuration")?;
        config.check()?;
        Ok(config)
    }

    /// Loads the file named on the command line, then applies the flags.
    pub fn load(cli: &Cli) -> anyhow::Result<Self> {
        let text = match &cli.config {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading configuration file {}", path.display()))?,
            ),
            None => None,
        };
        let mut config = Self::from_toml(text.as_deref())?;
        if let Some(v) = cli.grpc_listen {
            config.control.grpc_listen = v;
        }
        if let Some(v) = cli.shards {
            config.dataplane.shards = v;
        }
        if let Some(v) = cli.media_address {
            config.media.address = v;
        }
        if let Some(v) = cli.port_min {
            config.media.port_min = v;
        }
        if let Some(v) = cli.port_max {
            config.media.port_max = v;
        }
        if let Some(v) = &cli.log_level {
            config.log.level = v.clone();
        }
        if cli.no_pin {
            config.dataplane.pin_cores = false;
        }
        if cli.no_bind_device {
            config.media.bind_device = false;
        }
        if let Some(v) = cli.dscp {
            config.media.dscp = v;
        }
        if cli.allow_nonlocal {
            config.media.allow_nonlocal = true;
        }
        if !cli.rtpproxy_listen.is_empty() {
            config.rtpproxy.listen = cli.rtpproxy_listen.clone();
        }
        if let Some(dir) = &cli.record_dir {
            config.rtpproxy.record_dir = dir.clone();
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !self.rtpproxy.record_dir.as_os_str().is_empty() && !self.rtpproxy.record_dir.is_dir() {
            bail!(
                "rtpproxy.record_dir {} is not a directory",
                self.rtpproxy.record_dir.display()
            );
        }
        if self.media.port_min > self.media.port_max {
            bail!(
                "media.port_min {} is above media.port_max {}",
                self.media.port_min,
                self.media.port_max
            );
        }
        self.rtpproxy.udp_addresses()?;
        self.rtpproxy.bridge()?;
        for (i, iface) in self.interfaces.iter().enumerate() {
            iface.media()?;
            if self.interfaces[..i]
                .iter()
                .any(|o| o.name == iface.name || o.address == iface.address)
            {
                bail!("interface {:?}: name or address used twice", iface.name);
            }
        }
        if self.media.dscp > 63 {
            bail!("media.dscp {} is out of range 0-63", self.media.dscp);
        }
        let buffers = self.dataplane.buffers_per_shard;
        if !buffers.is_power_of_two() || buffers > 32768 {
            bail!("dataplane.buffers_per_shard {buffers} must be a power of two up to 32768");
        }
        let d = &self.dataplane;
        // A batch wait blocks the shard's thread: keep it far below the preemption slice, so
        // commands and timers are not held up by it.
        if d.batch_max_wait_us > 10_000 || d.batch_min_wait_us > d.batch_max_wait_us {
            bail!(
                "dataplane.batch_max_wait_us must be at most 10000 and batch_min_wait_us at most \
                 batch_max_wait_us (got {} and {})",
                d.batch_max_wait_us,
                d.batch_min_wait_us
            );
        }
        if self.media.max_packet_age_ms > 60_000 {
            bail!("media.max_packet_age_ms must be at most 60000 (0 = no limit)");
        }
        if d.linger_ms > 1_000 {
            bail!("dataplane.linger_ms must be at most 1000");
        }
        if d.busy_poll_us > 1_000_000 {
            bail!("dataplane.busy_poll_us must be at most 1000000 (1 s)");
        }
        if d.batch_packets > usize::from(d.buffers_per_shard) {
            bail!("dataplane.batch_packets must be at most buffers_per_shard");
        }
        // The same checks a request's options get, so a bad default fails at start-up.
        rtprelay_control::validate::options(None, &self.sessions.defaults())
            .map_err(|e| anyhow::anyhow!("[sessions]: {e}"))?;
        if self.dataplane.budget == 0 {
            bail!("dataplane.budget must be at least 1");
        }
        if self.dataplane.max_sockets_per_shard < 4 {
            bail!("dataplane.max_sockets_per_shard must be at least 4 (one UDP session)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::from_toml(None).unwrap();
        assert_eq!(c.control.grpc_listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!((c.media.port_min, c.media.port_max), (16384, 32767));
        assert_eq!(c.dataplane.shards, 0);
    }

    #[test]
    fn a_file_overrides_single_keys() {
        let c = Config::from_toml(Some("[media]\nport_min = 20000\n")).unwrap();
        assert_eq!(c.media.port_min, 20000);
        assert_eq!(c.media.port_max, 32767, "other keys keep their defaults");
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(
            Config::from_toml(Some("[media]\nport_mn = 1\n")).is_err(),
            "unknown key"
        );
        assert!(Config::from_toml(Some("[media]\nport_min = 40000\nport_max = 30000\n")).is_err());
        assert!(Config::from_toml(Some("[dataplane]\nbuffers_per_shard = 1000\n")).is_err());
        assert!(Config::from_toml(Some("[dataplane]\nbatch_max_wait_us = 20000\n")).is_err());
        assert!(Config::from_toml(Some("[dataplane]\nbatch_min_wait_us = 200\n")).is_err());
        assert!(Config::from_toml(Some("[dataplane]\ntask_run = \"sometimes\"\n")).is_err());
        let off = Config::from_toml(Some(
            "[dataplane]\ntask_run = \"defer\"\nbatch_packets = 0\n",
        ));
        assert_eq!(off.unwrap().dataplane.task_run, TaskRun::Defer);
        assert!(Config::from_toml(Some("not toml [")).is_err());
    }

    #[test]
    fn rtpproxy_listeners_parse() {
        let c = Config::from_toml(Some(
            "[rtpproxy]\nlisten = [\"udp:127.0.0.1:7722\", \"udp6:[::1]:7722\"]\n",
        ))
        .unwrap();
        let addrs = c.rtpproxy.udp_addresses().unwrap();
        assert_eq!(addrs[0], "127.0.0.1:7722".parse().unwrap());
        assert_eq!(addrs[1], "[::1]:7722".parse().unwrap());
        let unix =
            Config::from_toml(Some("[rtpproxy]\nlisten = [\"unix:/run/x.sock\"]\n")).unwrap();
        assert_eq!(
            unix.rtpproxy.unix_paths(),
            vec![PathBuf::from("/run/x.sock")]
        );
        assert!(Config::from_toml(Some("[rtpproxy]\nlisten = [\"tcp:1.2.3.4:5\"]\n")).is_err());
    }

    #[test]
    fn rtpproxy_bridge_needs_both_addresses() {
        let c = Config::from_toml(None).unwrap();
        assert_eq!(c.rtpproxy.bridge().unwrap(), None);
        let c = Config::from_toml(Some(
            "[rtpproxy]\ninternal = \"127.0.0.1\"\nexternal = \"127.0.0.2\"\n",
        ))
        .unwrap();
        let b = c.rtpproxy.bridge().unwrap().unwrap();
        assert_eq!(
            (b.internal.to_string(), b.external.to_string()),
            ("127.0.0.1".into(), "127.0.0.2".into())
        );
        assert!(Config::from_toml(Some("[rtpproxy]\ninternal = \"127.0.0.1\"\n")).is_err());
        assert!(Config::from_toml(Some("[rtpproxy]\nexternal = \"nowhere\"\n")).is_err());
        assert!(Config::from_toml(Some("[rtpproxy]\nlisten = [\"udp:nowhere\"]\n")).is_err());
    }

    #[test]
    fn interfaces_are_checked() {
        let good = "[[interfaces]]\nname = \"a\"\naddress = \"127.0.0.1\"\nadvertised = \"203.0.113.1\"\nport_min = 21000\nport_max = 21099\ndscp = 10\n";
        let c = Config::from_toml(Some(good)).unwrap();
        let m = c.interfaces[0].media().unwrap();
        assert_eq!((m.ports.unwrap().first, m.dscp), (21000, Some(10)));
        let half = "[[interfaces]]\nname = \"a\"\naddress = \"127.0.0.1\"\nport_min = 21000\n";
        assert!(Config::from_toml(Some(half)).is_err());
        let twice = format!("{good}[[interfaces]]\nname = \"b\"\naddress = \"127.0.0.1\"\n");
        assert!(Config::from_toml(Some(&twice)).is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::parse_from([
            "rtprelay",
            "--shards",
            "3",
            "--port-min",
            "20000",
            "--no-pin",
        ]);
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.dataplane.shards, 3);
        assert_eq!(c.media.port_min, 20000);
        assert!(!c.dataplane.pin_cores);
    }
}
