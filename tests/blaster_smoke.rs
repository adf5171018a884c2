//! Smoke tests of the RTP blaster (`rtp-blaster`, in the benches crate) against the real relay:
//! a few seconds of realistic two-way RTP through 20 sessions the blaster creates over gRPC, the
//! same through 20 calls it sets up over the rtpproxy protocol (UDP and a unix socket), a run
//! of two rates counted per phase, and a run interrupted with SIGINT. They guard both tools at
//! once: the relay must forward every packet of a light load, and the blaster must report
//! figures that make sense and remove its sessions afterwards, also when interrupted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Relay, free_udp_port};
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use tonic::transport::Channel;

const SESSIONS: u64 = 20;
const PPS_PER_FLOW: u64 = 50;
const SECONDS: u64 = 2;

/// The smoke runs take turns: each asserts zero loss, and several debug relays and blasters
/// at once on a 2-core machine lost packets (1 run in 3 with five at once).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Builds the blaster with the same profile as this test and returns its path.
///
/// The binary belongs to another package, so Cargo does not build it for this test; building
/// it here is a no-op when `cargo test --workspace` already did.
fn build_blaster() -> PathBuf {
    // This test runs from <target>/<profile>/deps/; the binary lands in <target>/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps")
        .to_path_buf();
    // The same target directory, so an up-to-date binary is not built again.
    let target_dir = profile_dir.parent().expect("<target> above <profile>");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-q",
            "-p",
            "rtprelay-benches",
            "--bin",
            "rtp-blaster",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building rtp-blaster failed: {status}");
    let bin = profile_dir.join("rtp-blaster");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// A finished blaster run: its exit status, its stderr and its JSON record.
struct Run {
    status: std::process::ExitStatus,
    stderr: String,
    doc: Json,
}

impl Run {
    fn ctx(&self) -> String {
        format!("blaster output:\n{}", self.stderr)
    }
}

/// Starts the blaster with `args` plus a JSON record in a temporary file.
fn spawn_blaster(blaster: &Path, args: &[String], json_path: &Path) -> std::process::Child {
    Command::new(blaster)
        .args(args)
        .arg("--json")
        .arg(json_path)
        .arg("--quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rtp-blaster")
}

/// Waits (bounded) for a blaster started by [`spawn_blaster`] and reads what it reported.
async fn finish_blaster(mut child: std::process::Child, json_path: &Path, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for rtp-blaster") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rtp-blaster did not finish within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = child
        .stderr
        .take()
        .map(|mut e| {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
        .unwrap_or_default();
    let text = std::fs::read_to_string(json_path)
        .unwrap_or_else(|e| panic!("no JSON record ({e}); blaster output:\n{stderr}"));
    let _ = std::fs::remove_file(json_path);
    let doc = Json::parse(&text).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{text}"));
    Run {
        status,
        stderr,
        doc,
    }
}

fn json_path(tag: &str, port: u16) -> PathBuf {
    std::env::temp_dir().join(format!(
        "rtp-blaster-{tag}-{}-{port}.json",
        std::process::id()
    ))
}

/// The light two-way load every smoke run offers, after the session source arguments.
fn light_load(sessions_from: &[String], run_id: &str) -> Vec<String> {
    let mut args = sessions_from.to_vec();
    args.extend(
        [
            "--sessions",
            &SESSIONS.to_string(),
            "--pps-per-session",
            &PPS_PER_FLOW.to_string(),
            "--direction",
            "both",
            "--seconds",
            &SECONDS.to_string(),
            "--run-id",
            run_id,
        ]
        .map(str::to_owned),
    );
    args
}

/// Runs the blaster with `args` to the end and checks it was a clean light run.
async fn clean_light_run(blaster: &Path, args: &[String], json: &Path) -> Run {
    let child = spawn_blaster(blaster, args, json);
    let run = finish_blaster(child, json, Duration::from_secs(SECONDS + 15)).await;
    assert_clean_light_run(&run);
    run
}

/// The checks every clean light run must pass, whatever set the sessions up: every packet
/// arrives once at the right socket, latency and jitter are plausible, and the verdict passes.
fn assert_clean_light_run(run: &Run) {
    let ctx = run.ctx();
    assert!(
        run.status.success(),
        "rtp-blaster failed ({}):\n{ctx}",
        run.status
    );
    let t = run.doc.at("trials.0");
    // Every packet of a light load arrives, once, at the right socket.
    let expected = (SESSIONS * 2 * PPS_PER_FLOW * SECONDS) as f64;
    let sent = t.num("sent");
    assert!(
        (sent - expected).abs() <= expected * 0.02,
        "sent {sent}, expected ~{expected}\n{ctx}"
    );
    assert_eq!(t.num("received"), sent, "{ctx}");
    for zero in [
        "lost",
        "silent_flows",
        "unprimed_sessions",
        "misrouted",
        "duplicates",
        "send_errors",
    ] {
        assert_eq!(t.num(zero), 0.0, "{zero} should be 0\n{ctx}");
    }
    assert_eq!(t.num("flows"), (2 * SESSIONS) as f64, "{ctx}");
    for dir in ["forward", "reverse"] {
        let d = t.at(&format!("directions.{dir}"));
        assert_eq!(d.num("sent"), d.num("received"), "{dir}\n{ctx}");
        assert!(
            d.num("sent") >= expected * 0.45,
            "{dir} sent too little\n{ctx}"
        );
    }
    assert!(
        matches!(t.at("pass"), Json::Bool(true)),
        "verdict should be pass\n{ctx}"
    );

    // Latency: one sample per packet, ordered percentiles, loopback-plausible values (generous
    // bounds: a debug build on a busy CI machine).
    let lat = t.at("latency_us");
    assert_eq!(lat.num("count"), sent, "{ctx}");
    let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| lat.num(k))
        .collect();
    assert!(p[0] > 0.0, "p50 must be positive\n{ctx}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order {p:?}\n{ctx}"
    );
    assert!(
        p[0] < 50_000.0,
        "p50 {} us implausible on loopback\n{ctx}",
        p[0]
    );
    assert!(p[4] < 2_000_000.0, "max {} us implausible\n{ctx}", p[4]);
    let jitter = t.at("jitter_us");
    assert_eq!(jitter.num("flows"), (2 * SESSIONS) as f64, "{ctx}");
    assert!(
        jitter.num("median") >= 0.0 && jitter.num("median") <= jitter.num("max"),
        "{ctx}"
    );
    assert!(jitter.num("max") < 100_000.0, "{ctx}");
}

/// The blaster's user name for this test run's sessions.
fn run_id(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

/// As root the receiver runs under SCHED_FIFO, so that path is exercised too.
fn priority_args() -> Vec<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        vec!["--recv-priority".into(), "10".into()]
    } else {
        eprintln!("NOTE: not root, so the smoke run leaves out --recv-priority (SCHED_FIFO)");
        Vec::new()
    }
}

/// The blaster reported no session of its run left, and the relay lists none.
async fn assert_all_removed(t: &Json, ctx: &str, client: &mut RelayClient<Channel>) {
    assert_eq!(t.num("sessions_left"), 0.0, "{ctx}");
    let listed = sessions_on(client).await;
    assert_eq!(listed.total, 0, "sessions left on the relay: {listed:?}");
}

async fn sessions_on(client: &mut RelayClient<Channel>) -> v1::ListSessionsResponse {
    client
        .list_sessions(v1::ListSessionsRequest::default())
        .await
        .expect("ListSessions")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blaster_reports_clean_two_way_run_and_removes_its_sessions() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let blaster = build_blaster();
    let (relay, mut client) = Relay::start(1, &[]).await;
    let json = json_path("smoke", relay.grpc.port());
    let mut args = priority_args();
    let realtime = !args.is_empty();
    args.extend(light_load(
        &["--grpc".into(), format!("http://{}", relay.grpc)],
        &run_id("smoke"),
    ));
    let run = clean_light_run(&blaster, &args, &json).await;
    let (t, ctx) = (run.doc.at("trials.0"), run.ctx());
    if realtime {
        assert_eq!(run.doc.num("config.recv_priority"), 10.0, "{ctx}");
    }

    // The relay saw the same traffic (plus one priming packet per session forward), and the
    // blaster removed every session it created.
    let relay_fwd = t.at("relay_counters.forward").num("packets_sent");
    let fwd = t.at("directions.forward").num("sent");
    // Priming packets may be retried on a slow machine, hence at least.
    assert!(relay_fwd >= fwd + SESSIONS as f64, "{ctx}");
    assert_eq!(
        t.at("relay_counters.reverse").num("packets_sent"),
        t.at("directions.reverse").num("sent"),
        "{ctx}"
    );
    assert_all_removed(t, &ctx, &mut client).await;
    drop(relay);
}

/// `--phases`: two rates back to back on the same sessions, each phase counted apart from the
/// phase tag every packet carries. A light load, so each phase must arrive complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blaster_counts_each_phase_of_a_run_apart() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let blaster = build_blaster();
    let (relay, mut client) = Relay::start(1, &[]).await;
    let json = json_path("phases", relay.grpc.port());
    let mut args = priority_args();
    args.extend(
        [
            "--grpc",
            &format!("http://{}", relay.grpc),
            "--sessions",
            &SESSIONS.to_string(),
            "--direction",
            "both",
            "--phases",
            "1000:1,3000:1",
            "--run-id",
            &run_id("phases"),
        ]
        .map(str::to_owned),
    );
    let run = finish_blaster(
        spawn_blaster(&blaster, &args, &json),
        &json,
        Duration::from_secs(20),
    )
    .await;
    let (t, ctx) = (run.doc.at("trials.0"), run.ctx());
    assert!(
        run.status.success(),
        "rtp-blaster failed ({}):\n{ctx}",
        run.status
    );
    let mut sent = 0.0;
    for (k, rate) in [(0, 1000.0), (1, 3000.0)] {
        let p = t.at(&format!("phases.{k}"));
        assert_eq!(p.num("rate"), rate, "{ctx}");
        // Each phase offered its own rate, and all of it arrived.
        assert!(
            (p.num("sent") - rate).abs() <= rate * 0.02,
            "phase {k} sent {} of {rate}\n{ctx}",
            p.num("sent")
        );
        assert_eq!(p.num("received"), p.num("sent"), "phase {k}\n{ctx}");
        assert_eq!(p.num("silent_flows"), 0.0, "phase {k}\n{ctx}");
        assert_eq!(
            p.at("latency_us").num("count"),
            p.num("sent"),
            "phase {k}\n{ctx}"
        );
        sent += p.num("sent");
    }
    // The phases add up to the run.
    assert_eq!(t.num("sent"), sent, "{ctx}");
    assert_eq!(t.num("received"), sent, "{ctx}");
    assert!(matches!(t.at("pass"), Json::Bool(true)), "{ctx}");
    assert_all_removed(t, &ctx, &mut client).await;
    drop(relay);
}

/// A relay with an rtpproxy UDP control listener: the relay, its gRPC client, the listener
/// (`udp:127.0.0.1:PORT`) and a JSON record path for the blaster.
async fn rtpproxy_relay(tag: &str) -> (Relay, RelayClient<Channel>, String, PathBuf) {
    let ctl = free_udp_port();
    let listen = format!("udp:127.0.0.1:{ctl}");
    let (relay, client) = Relay::start(1, &["--rtpproxy-listen", &listen]).await;
    (relay, client, listen, json_path(tag, ctl))
}

/// The same light load with the calls set up over the rtpproxy protocol, as Kamailio does
/// (`U` with the caller, `L` with the callee), queried with `Q` and deleted with `D`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blaster_sets_up_calls_over_rtpproxy_and_deletes_them() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let blaster = build_blaster();
    let (relay, mut client, listen, json) = rtpproxy_relay("rtpp").await;
    let mut args = priority_args();
    args.extend(light_load(&["--rtpproxy".into(), listen], &run_id("rtpp")));
    let run = clean_light_run(&blaster, &args, &json).await;
    let (t, ctx) = (run.doc.at("trials.0"), run.ctx());
    // The relay sent from the ports its U replies named: the blaster's sinks took them as
    // the reverse peers and nothing was filtered.
    assert_eq!(t.num("reverse_address_mismatch"), 0.0, "{ctx}");
    // The relay's own view (Q before D): every call answered, everything relayed, nothing
    // dropped; the sinks counted what it relayed (priming packets at least once each).
    let q = t.at("relay_query");
    assert_eq!(q.num("calls"), SESSIONS as f64, "{ctx}");
    assert_eq!(q.num("packets_dropped"), 0.0, "{ctx}");
    assert_eq!(q.num("packets_received"), q.num("packets_relayed"), "{ctx}");
    assert!(
        q.num("packets_relayed") >= t.num("received") + SESSIONS as f64,
        "{ctx}"
    );
    assert_all_removed(t, &ctx, &mut client).await;
    drop(relay);
}

/// The same over a unix stream socket, as Kamailio's `rtpproxy_sock "unix:/PATH"` does it: one
/// connection per command, no cookies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blaster_sets_up_calls_over_a_unix_control_socket() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let blaster = build_blaster();
    let path = std::env::temp_dir().join(format!("rtprelay-blaster-{}.sock", std::process::id()));
    let listen = format!("unix:{}", path.display());
    let (relay, mut client) = Relay::start(1, &["--rtpproxy-listen", &listen]).await;
    let json = json_path("unix", relay.grpc.port());
    let args = light_load(&["--rtpproxy".into(), listen], &run_id("unix"));
    let run = clean_light_run(&blaster, &args, &json).await;
    let (t, ctx) = (run.doc.at("trials.0"), run.ctx());
    assert_eq!(t.at("relay_query").num("calls"), SESSIONS as f64, "{ctx}");
    assert_all_removed(t, &ctx, &mut client).await;
    drop(relay);
    let _ = std::fs::remove_file(&path);
}

/// Ctrl-C in the middle of a run: the blaster stops sending, reports what it measured as
/// interrupted, and still deletes every call it set up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_blaster_reports_and_deletes_its_calls() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let blaster = build_blaster();
    let (relay, mut client, listen, json) = rtpproxy_relay("sigint").await;
    let mut args = light_load(&["--rtpproxy".into(), listen], &run_id("sigint"));
    // Far longer than the test waits: only the signal can end it in time.
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .expect("--seconds")
        + 1;
    args[seconds] = "120".into();
    let child = spawn_blaster(&blaster, &args, &json);
    let deadline = Instant::now() + Duration::from_secs(20);
    // One relay session per call (rtpproxy's U creates both sides).
    while sessions_on(&mut client).await.total < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "the blaster's calls never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let media flow for a moment, then interrupt as a terminal's Ctrl-C does.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: kill has no memory preconditions; the PID is our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0, "SIGINT");
    let run = finish_blaster(child, &json, Duration::from_secs(15)).await;
    let (t, ctx) = (run.doc.at("trials.0"), run.ctx());
    assert!(run.status.success(), "exit {}\n{ctx}", run.status);
    assert!(matches!(t.at("interrupted"), Json::Bool(true)), "{ctx}");
    assert!(t.num("send_seconds") < 60.0, "{ctx}");
    assert!(t.num("received") > 0.0, "{ctx}");
    assert_all_removed(t, &ctx, &mut client).await;
    drop(relay);
}

/// Just enough JSON to read the blaster's record (the root package has no JSON dependency).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    /// The value at a dotted path (`trials.0.latency_us`); panics with the path if absent.
    fn at(&self, path: &str) -> &Json {
        let mut v = self;
        for key in path.split('.') {
            v = match v {
                Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                Json::Arr(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            }
            .unwrap_or_else(|| panic!("no {path:?} in the JSON record"));
        }
        v
    }

    fn num(&self, path: &str) -> f64 {
        match self.at(path) {
            Json::Num(n) => *n,
            other => panic!("{path:?} is not a number: {other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> Result<(), String> {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(format!("expected {lit:?} at byte {}", self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'n') => self.eat("null").map(|_| Json::Null),
            Some(b't') => self.eat("true").map(|_| Json::Bool(true)),
            Some(b'f') => self.eat("false").map(|_| Json::Bool(false)),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return Err(format!("bad array at byte {}", self.i)),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.ws();
                    self.eat(":")?;
                    fields.push((key, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => return Err(format!("bad object at byte {}", self.i)),
                    }
                }
            }
            Some(_) => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .map(Json::Num)
                    .ok_or_else(|| format!("bad number at byte {start}"))
            }
            None => Err("unexpected end".into()),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat("\"")?;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err("bad escape".into());
                    };
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'u' => {
                            // Control characters only, in what the blaster writes; keep a
                            // placeholder rather than decoding surrogates.
                            self.i += 4;
                            out.push(b'?');
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

#[test]
fn json_reader_handles_the_record_shapes() {
    let v = Json::parse(r#"{"a": [1, 2.5e3, -0.5], "b": {"c": null, "d": "x\"y"}, "e": true}"#)
        .expect("valid");
    assert_eq!(v.num("a.1"), 2500.0);
    assert_eq!(v.num("a.2"), -0.5);
    assert_eq!(v.at("b.c"), &Json::Null);
    assert_eq!(v.at("b.d"), &Json::Str("x\"y".into()));
    assert_eq!(v.at("e"), &Json::Bool(true));
    assert!(Json::parse("{\"a\": 1,}").is_err());
    assert!(Json::parse("[1 2]").is_err());
}
