//! Command-line flags (clap) and their parsing helpers.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leasering::Placement;

/// Most members the demo runs at once: each keeps two or three connections
/// and the throwaway server allows 200.
pub const MAX_MEMBERS: u32 = 50;

/// Most zones `ringnode demo --zones` names: `zone-a` to `zone-z`.
pub const MAX_ZONES: u32 = 26;

#[derive(Debug, Parser)]
#[command(
    name = "ringnode",
    version,
    about = "The leasering demo: partitions shared through a consistent-hashing ring whose \
             membership is kept as leases in PostgreSQL",
    long_about = None,
    after_help = "Without a subcommand, runs `ringnode demo`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// N members in this process on a throwaway PostgreSQL, with a live dashboard
    /// (keys: j join, l leave, k crash, p pause, r ready, u cordon, c churn, q quit;
    /// `--zones N` spreads the members over N zones)
    Demo(DemoArgs),
    /// One member in this process against a shared database: run one per terminal
    Node(NodeArgs),
    /// Reads a ring straight from its database and prints its members, the
    /// partitions waiting for a claim and the ring's epoch (read-only)
    #[command(
        after_help = "Exit codes: 0 the ring was read; 1 another error; 2 bad flags; \
                            3 ring not found (or no leasering schema); 4 database unreachable."
    )]
    Status(StatusArgs),
    /// Empties a member without stopping it: it gives up its partitions with
    /// drain and stays in the ring holding nothing. Stored by node id in the
    /// database: it outlives the member's restarts (and may be set while it is absent)
    #[command(after_help = "Exit codes: 0 done; 1 another error; 2 bad flags; \
                            3 ring not found (or no leasering schema); 4 database unreachable.")]
    Cordon(CordonArgs),
    /// Lifts a cordon: the member takes a share again
    #[command(after_help = "Exit codes: 0 done; 1 another error; 2 bad flags; \
                            3 ring not found (or no leasering schema); 4 database unreachable.")]
    Uncordon(CordonArgs),
    /// Pins a partition to a node id (balanced placement): the partition
    /// moves there and stays through joins and leaves while the node is an
    /// eligible member, and follows the placement while it is away. Stored
    /// with the ring
    #[command(
        after_help = "Exit codes: 0 done; 1 another error; 2 bad flags (a partition \
                            outside the ring, a hashed ring); 3 ring not found (or no leasering \
                            schema); 4 database unreachable."
    )]
    Pin(PinArgs),
    /// Removes a partition's pin: the placement decides its owner again
    #[command(after_help = "Exit codes: 0 done; 1 another error; 2 bad flags; \
                            3 ring not found (or no leasering schema); 4 database unreachable.")]
    Unpin(PinArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CordonArgs {
    /// The ring's PostgreSQL (libpq `key=value` string or `postgresql://` URL)
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,
    /// Name of the ring
    #[arg(long, default_value = "ringnode", value_name = "ID")]
    pub ring_id: String,
    /// The member's node id
    #[arg(long, value_name = "ID")]
    pub node_id: String,
    /// Schema of the leasering tables
    #[arg(long, default_value = "leasering", value_name = "NAME")]
    pub schema: String,
}

#[derive(Debug, Clone, Args)]
pub struct PinArgs {
    /// The ring's PostgreSQL (libpq `key=value` string or `postgresql://` URL)
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,
    /// Name of the ring
    #[arg(long, default_value = "ringnode", value_name = "ID")]
    pub ring_id: String,
    /// The partition
    #[arg(long, value_name = "P")]
    pub partition: u32,
    /// The node id to pin it to (`pin` only)
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Schema of the leasering tables
    #[arg(long, default_value = "leasering", value_name = "NAME")]
    pub schema: String,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The ring's PostgreSQL (libpq `key=value` string or `postgresql://` URL)
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,
    /// Name of the ring
    #[arg(long, default_value = "ringnode", value_name = "ID")]
    pub ring_id: String,
    /// Schema of the leasering tables
    #[arg(long, default_value = "leasering", value_name = "NAME")]
    pub schema: String,
    /// JSON for scripts: {ring_id, schema, epoch, ring_size, changed_ago_seconds,
    /// members: [{node_id, lease_left_seconds, expired, acked_epoch, epoch_lag,
    /// vnodes, partitions_claimed, metadata, ready, cordoned, zone, capacity}],
    /// partitions_unassigned, cordoned: [node ids],
    /// waiting: [{partition, assigned_to, held_by, waiter_marked}]}
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Members to start with
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_MEMBERS as i64))]
    pub nodes: u32,
    /// Use this PostgreSQL instead of starting a throwaway one
    /// (libpq `key=value` string or `postgresql://` URL)
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Name of the ring
    #[arg(long, default_value = "demo", value_name = "ID")]
    pub ring_id: String,
    /// Partitions in the ring
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub ring_size: u32,
    /// Vnodes (ring positions) per member
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub vnodes: u32,
    /// How partitions are placed: `hashed` (consistent hashing) or
    /// `balanced` (every member within one partition of its share, minimal
    /// moves); fixed when the ring is created [default: hashed; balanced
    /// with --zones]
    #[arg(long, value_name = "PLACEMENT", value_parser = parse_placement)]
    pub placement: Option<Placement>,
    /// Spread the members over N zones (failure domains) `zone-a`, `zone-b`,
    /// …: member i gets zone i mod N, and each member joined later (`j`,
    /// churn) the next zone in turn. Needs balanced placement (the default
    /// with this flag): the dashboard colours members by zone and shows each
    /// zone's partitions and weighted share; `--plain` prints a
    /// `zones: zone-a 342 (341.3) · …` line with each status line
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_ZONES as i64))]
    pub zones: Option<u32>,
    /// The ring's move budget: at most N partitions in motion between live
    /// members at once, so a join (`j`) takes its share in steps while the
    /// old owners keep serving the rest. Needs balanced placement (the
    /// default with this flag)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_moving: Option<u32>,
    /// Lease time-to-live: a crashed or paused member's partitions move after about this long
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// Join, leave, crash and pause members at random
    #[arg(long)]
    pub churn: bool,
    /// Mean time between two churn actions
    #[arg(long, default_value = "1.5s", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub churn_every: Duration,
    /// How long `p` freezes a member [default: 1.5 × lease TTL]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub pause: Option<Duration>,
    /// No terminal UI: one line per event, a status line per second, the band's
    /// text (`ring: …`) when it changes, and a final
    /// `demo: members=… partitions_active=… overlaps=… handoffs=…` line; commands
    /// one a line on stdin unless it is a terminal (j; l, k or p with an optional member; c; v; q)
    #[arg(long)]
    pub plain: bool,
    /// Stop by itself after this many seconds (churn stops early enough for the
    /// ring to settle before the final count)
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub seconds: Option<Duration>,
    /// Schema of the leasering tables
    #[arg(long, default_value = "leasering", value_name = "NAME")]
    pub schema: String,
    /// Seed of the churn's random choices [default: from the clock]
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Drained handoffs: each member runs a simulated worker that needs this
    /// long to finish its unit of work on partitions it releases, and their
    /// next owner starts only then (drain timeout: twice this) [default: off]
    #[arg(long, value_name = "DURATION", value_parser = parse_drain)]
    pub drain: Option<Duration>,
    /// Serve GET /metrics (Prometheus text format), /healthz (200 while the
    /// process runs) and /readyz on this address, e.g. 127.0.0.1:9464.
    /// /readyz answers 200 while at least one member is live and every live
    /// member (not starting, paused, leaving or crashed) is in the ring with
    /// a valid lease and not fenced; else 503 with a one-line reason naming
    /// the first member that is not
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
}

impl Default for DemoArgs {
    fn default() -> DemoArgs {
        DemoArgs {
            nodes: 5,
            database_url: None,
            ring_id: "demo".into(),
            ring_size: 1024,
            vnodes: 8,
            placement: None,
            zones: None,
            max_moving: None,
            lease_ttl: Duration::from_secs(3),
            churn: false,
            churn_every: Duration::from_millis(1500),
            pause: None,
            plain: false,
            seconds: None,
            schema: "leasering".into(),
            seed: None,
            drain: None,
            http: None,
        }
    }
}

impl DemoArgs {
    /// The placement in force: `--placement` if given, else balanced with
    /// `--zones` or `--max-moving`, else hashed.
    pub fn effective_placement(&self) -> Placement {
        match (
            self.placement,
            self.zones.is_some() || self.max_moving.is_some(),
        ) {
            (Some(p), _) => p,
            (None, true) => Placement::Balanced,
            (None, false) => Placement::Hashed,
        }
    }

    /// Flags that parse one by one but not together: a usage error (exit 2).
    pub fn check(&self) -> Result<(), String> {
        if let (Some(n), Some(Placement::Hashed)) = (self.zones, self.placement) {
            return Err(format!(
                "--zones {n} needs balanced placement: it cannot be used with --placement hashed \
                 (leave --placement out, or use --placement balanced)"
            ));
        }
        if let (Some(m), Some(Placement::Hashed)) = (self.max_moving, self.placement) {
            return Err(format!(
                "--max-moving {m} needs balanced placement: it cannot be used with --placement hashed \
                 (leave --placement out, or use --placement balanced)"
            ));
        }
        Ok(())
    }

    /// The names of the `--zones` zones, in turn: `zone-a`, `zone-b`, …
    pub fn zone_names(&self) -> Vec<String> {
        (0..self.zones.unwrap_or(0).min(MAX_ZONES))
            .map(|i| format!("zone-{}", (b'a' + i as u8) as char))
            .collect()
    }
}

impl Cli {
    /// Checks across flags that clap does not express; the message of a
    /// usage error (exit 2).
    pub fn check(&self) -> Result<(), String> {
        match &self.command {
            Some(Command::Demo(a)) => a.check(),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The shared PostgreSQL (libpq `key=value` string or `postgresql://` URL)
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,
    /// Name of the ring
    #[arg(long, default_value = "ringnode", value_name = "ID")]
    pub ring_id: String,
    /// This member's id [default: node_ + 16 random hex digits]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Vnodes (ring positions) of this member: its weight
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub vnodes: u32,
    /// Partitions in the ring (every member must agree)
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub ring_size: u32,
    /// How partitions are placed: `hashed` or `balanced` (every member must
    /// agree)
    #[arg(long, default_value = "hashed", value_name = "PLACEMENT", value_parser = parse_placement)]
    pub placement: Placement,
    /// This member's zone: a failure domain such as an availability zone or
    /// a rack (1 to 63 letters, digits, `.`, `_`, `-`, `:`). Balanced
    /// placement keeps each zone within one partition of its weighted
    /// share and spreads a lost zone's partitions over the others. Needs
    /// `--placement balanced`
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// The most partitions this member holds; when the members' capacities
    /// add up to less than the ring, the rest has no owner (`ringnode
    /// status` says how many). Needs `--placement balanced`
    #[arg(long, value_name = "N")]
    pub capacity: Option<u32>,
    /// The ring's move budget: at most N partitions in motion between live
    /// members at once (every member must agree; stored with the ring).
    /// Needs `--placement balanced`
    #[arg(long, value_name = "N")]
    pub max_moving: Option<u32>,
    /// A small string stored with this member and shown to every member and
    /// observer (e.g. the address where it serves its partitions)
    #[arg(long, value_name = "TEXT")]
    pub metadata: Option<String>,
    /// Lease time-to-live
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How long nothing is taken after a database promotion; `0s` only if
    /// every promotion is of a synchronous standby [default: lease TTL plus
    /// the margin]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub failover_grace: Option<Duration>,
    /// Schema of the leasering tables
    #[arg(long, default_value = "leasering", value_name = "NAME")]
    pub schema: String,
    /// Ctrl+C (or q) exits without leaving, like a crash: the others take over
    /// when the lease runs out
    #[arg(long)]
    pub crash: bool,
    /// No terminal UI: one line per event and a status line per second
    /// (also when stdout is not a terminal)
    #[arg(long)]
    pub plain: bool,
    /// Serve GET /metrics (Prometheus text format), /healthz (200 while the
    /// process runs) and /readyz on this address, e.g. 127.0.0.1:9464.
    /// /readyz answers 200 while the member is in the ring with a valid lease
    /// and not fenced, else 503 with a one-line reason
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
}

/// Parses `1.5s`, `500ms`, `2m`, `1h`, `750us`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 3s, 500ms, 1.5s, 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("{s:?} is too short: at least 10ms"));
    }
    Ok(d)
}

/// Longest `--drain`: a graceful stop waits for its drains, and the demo
/// gives every member's stop 10 s when it quits.
pub const MAX_DRAIN: Duration = Duration::from_secs(3);

fn parse_placement(s: &str) -> Result<Placement, String> {
    s.parse::<Placement>().map_err(|e| e.message().to_string())
}

fn parse_drain(s: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(s)?;
    if d > MAX_DRAIN {
        return Err(format!("{s:?} is too long: at most {MAX_DRAIN:?}"));
    }
    Ok(d)
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

/// A clap error as one line, without the usage block and tips.
pub fn one_line_clap(e: &clap::Error) -> String {
    // The message is the first paragraph (a missing argument is named on
    // the lines after "not provided:"); usage and tips follow a blank line.
    let text = e.render().to_string();
    let para: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let line = para.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line).trim();
    if line.is_empty() {
        "invalid arguments".to_string()
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_seconds("0").is_err());
        assert_eq!(parse_drain("300ms").unwrap(), Duration::from_millis(300));
        assert!(parse_drain("1ms").is_err());
        assert!(parse_drain("4s").is_err());
    }

    #[test]
    fn flags_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["ringnode", "demo", "--plain", "--seconds", "10", "--churn"])
                .unwrap();
        match cli.command {
            Some(Command::Demo(a)) => {
                assert!(a.plain && a.churn);
                assert_eq!(a.seconds, Some(Duration::from_secs(10)));
                assert_eq!(a.nodes, 5);
            }
            other => panic!("{other:?}"),
        }
        let e = Cli::try_parse_from(["ringnode", "demo", "--nodes", "0"]).unwrap_err();
        assert!(
            one_line_clap(&e).contains("--nodes"),
            "{}",
            one_line_clap(&e)
        );
        let demo = |args: &[&str]| match Cli::try_parse_from(
            ["ringnode", "demo"].iter().chain(args).copied(),
        ) {
            Ok(Cli {
                command: Some(Command::Demo(a)),
            }) => a,
            other => panic!("{other:?}"),
        };
        let a = demo(&["--zones", "3"]);
        assert_eq!(a.zones, Some(3));
        assert_eq!(a.effective_placement(), Placement::Balanced);
        assert_eq!(a.zone_names(), ["zone-a", "zone-b", "zone-c"]);
        assert!(a.check().is_ok());
        let a = demo(&["--zones", "2", "--placement", "balanced"]);
        assert!(a.check().is_ok());
        let a = demo(&["--zones", "2", "--placement", "hashed"]);
        let e = a.check().unwrap_err();
        assert!(
            e.contains("--zones") && e.contains("--placement hashed"),
            "{e}"
        );
        assert_eq!(demo(&[]).effective_placement(), Placement::Hashed);
        assert_eq!(demo(&[]).zone_names(), Vec::<String>::new());
        assert_eq!(demo(&["--zones", "26"]).zone_names()[25], "zone-z");
        assert!(Cli::try_parse_from(["ringnode", "demo", "--zones", "0"]).is_err());
        assert!(Cli::try_parse_from(["ringnode", "demo", "--zones", "27"]).is_err());
        let e = Cli::try_parse_from(["ringnode", "node"]).unwrap_err();
        let line = one_line_clap(&e);
        assert!(line.contains("not provided: --database-url"), "{line}");
        assert!(!line.contains("Usage"), "{line}");
    }
}
