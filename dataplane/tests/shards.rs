//! The data plane in-process, without gRPC: shards wake for commands without busy-polling and
//! act on them quickly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtprelay_dataplane::event::NoEvents;
use rtprelay_dataplane::ports::PortRange;
use rtprelay_dataplane::{Command, Dataplane, DataplaneConfig, Protocol, SessionSpec};
use tokio::sync::oneshot;

fn cpu_ticks_of_this_process() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
}

#[test]
fn idle_shards_sleep_and_commands_take_well_under_a_millisecond() {
    let mut config = DataplaneConfig::new(2, PortRange::new(36000, 36999).unwrap());
    config.uring.max_sockets = 1024;
    config.uring.buffers = 256;
    let dp = Dataplane::start(config, Arc::new(NoEvents)).expect("start the data plane");
    let handles = dp.handles().to_vec();

    // One session per shard so lookups do real work.
    for (i, h) in handles.iter().enumerate() {
        let (reply, rx) = oneshot::channel();
        let spec = SessionSpec {
            id: format!("s{i}"),
            protocol: Protocol::Udp,
            listen: "127.0.0.1:0".parse().unwrap(),
            connect: "127.0.0.1:0".parse().unwrap(),
            destination: "127.0.0.1:9".parse().unwrap(),
            options: Default::default(),
        };
        h.send(Command::Create { spec, reply }).unwrap();
        rx.blocking_recv().unwrap().expect("create");
    }

    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks_of_this_process();
    std::thread::sleep(Duration::from_secs(2));
    let idle = cpu_ticks_of_this_process() - before;
    assert!(
        idle <= 4,
        "two idle shards used {idle} ticks (10 ms each) in 2 s"
    );

    // Command latency: from pushing the command to receiving the reply, measured with the shard
    // asleep before each command (1 ms apart), which is the slow path.
    let mut lat = Vec::new();
    for n in 0..400 {
        let (i, h) = (n % handles.len(), &handles[n % handles.len()]);
        let (reply, rx) = oneshot::channel();
        let t = Instant::now();
        h.send(Command::Get {
            id: format!("s{i}"),
            reply,
        })
        .unwrap();
        let got = rx.blocking_recv().unwrap();
        lat.push(t.elapsed());
        assert!(got.is_some());
        std::thread::sleep(Duration::from_millis(1));
    }
    lat.sort();
    let (p50, p99, max) = (
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1],
    );
    eprintln!(
        "command round trip with sleeping shards: p50 {p50:?} p99 {p99:?} max {max:?}; idle CPU {idle} ticks / 2 s"
    );
    assert!(p50 < Duration::from_millis(1), "p50 {p50:?}");
    dp.stop_blocking();
}
