//! Exact reply texts, including the size bounds that turn oversized replies into E25/E26.

use std::net::SocketAddr;

use super::ErrorCode;
use super::command::QueryStat;
use super::frame::format_reply;
use super::reply::{Info, QueryCounters, Reply, StatValue};

#[test]
fn reply_rendering() {
    assert_eq!(Reply::Ok.render(), "0");
    assert_eq!(Reply::Feature(false).render(), "0");
    assert_eq!(Reply::Error(ErrorCode::SessionUnknown).render(), "E50");
    assert_eq!(
        Reply::Port {
            port: 0,
            addr: None
        }
        .render(),
        "0"
    );
    assert_eq!(
        Reply::Port {
            port: 4000,
            addr: Some("0.0.0.0".parse().expect("ip"))
        }
        .render(),
        "4000"
    );
    let counters = QueryCounters {
        ttl: 58,
        npkts_ina: 100,
        npkts_ino: 99,
        nrelayed: 199,
        ndropped: 1,
    };
    assert_eq!(
        Reply::Query {
            verbose: false,
            counters
        }
        .render(),
        "58 100 99 199 1"
    );
    assert_eq!(
        Reply::Query {
            verbose: true,
            counters
        }
        .render(),
        "ttl=58 npkts_ina=100 npkts_ino=99 nrelayed=199 ndropped=1"
    );
    let values = vec![
        (QueryStat::RtpaNsent, StatValue::Count(7)),
        (QueryStat::RtpaJmax, StatValue::Float(1.5)),
    ];
    assert_eq!(
        Reply::QueryStats {
            verbose: false,
            values: values.clone()
        }
        .render(),
        "7 1.500000"
    );
    assert_eq!(
        Reply::QueryStats {
            verbose: true,
            values
        }
        .render(),
        "rtpa_nsent=7 rtpa_jmax=1.500000"
    );
    let info = Info {
        sessions_created: 3,
        active_sessions: 2,
        active_streams: 4,
        packets_received: 10,
        packets_transmitted: 9,
        average_load: Some(0.25),
    };
    assert_eq!(
        format_reply(Some("k"), &Reply::Info(info).render()),
        "k sessions created: 3\nactive sessions: 2\nactive streams: 4\npackets received: 10\n\
         packets transmitted: 9\naverage load: 0.250000\n"
    );
    let stats = vec![
        ("nsess_created".to_owned(), StatValue::Count(5)),
        ("x".to_owned(), StatValue::Float(f64::NAN)),
    ];
    assert_eq!(
        Reply::Stats {
            verbose: true,
            values: stats
        }
        .render(),
        "nsess_created=5 x=nan"
    );
}

#[test]
fn oversized_replies_become_e25_or_e26() {
    let values = vec![("n".repeat(200), StatValue::Count(u64::MAX)); 100];
    assert_eq!(
        Reply::Stats {
            verbose: true,
            values
        }
        .render(),
        "E25"
    );
    let values = vec![(QueryStat::RtpaNsent, StatValue::Float(f64::MAX)); 100];
    assert_eq!(
        Reply::QueryStats {
            verbose: false,
            values
        }
        .render(),
        "E26"
    );
    let reply = format_reply(
        Some(&"k".repeat(128)),
        &Reply::Port {
            port: 65535,
            addr: None,
        }
        .render(),
    );
    assert!(reply.len() <= super::frame::MAX_REPLY_LEN);
}

#[test]
fn port_reply_with_ipv4_socket() {
    let addr: SocketAddr = "203.0.113.7:0".parse().expect("addr");
    assert_eq!(
        Reply::Port {
            port: 35000,
            addr: Some(addr.ip())
        }
        .render(),
        "35000 203.0.113.7"
    );
}
