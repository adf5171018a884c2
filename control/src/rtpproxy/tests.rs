//! Whole-exchange tests: exact datagrams in, exact datagrams out, through framing, parsing, a
//! stand-in executor and rendering; and every parse error with its code.

use std::net::IpAddr;

use super::capabilities::supports;
use super::command::*;
use super::frame::{Mode, format_reply, split};
use super::reply::Reply;
use super::{ErrorCode, parse};

/// Answers like a relay with one public address that allocates port 35000 for every `U`.
fn execute(cmd: &Command) -> Reply {
    let public: IpAddr = "192.0.2.1".parse().expect("ip");
    match cmd {
        Command::Version => Reply::Version,
        Command::VersionFeature { date } => Reply::Feature(supports(date)),
        Command::Update(_) => Reply::Port {
            port: 35000,
            addr: Some(public),
        },
        Command::Lookup(_) => Reply::Port {
            port: 35002,
            addr: Some(public),
        },
        _ => Reply::Ok,
    }
}

fn exchange(datagram: &str) -> String {
    match split(datagram.as_bytes(), Mode::Datagram) {
        Err(e) => e.reply(),
        Ok(f) => {
            let reply = parse(f.command).map_or_else(Reply::Error, |c| execute(&c));
            format_reply(f.cookie, &reply.render())
        }
    }
}

fn tag(t: &str, media: Option<u32>) -> Tag {
    Tag {
        tag: t.into(),
        media,
    }
}

#[test]
fn kamailio_5_6_transcript() {
    let transcript = [
        ("29816_0 V", "29816_0 20040107\n"),
        ("29816_1 VF 20050322", "29816_1 1\n"),
        ("29816_2 VF 20071116", "29816_2 0\n"),
        ("29816_3 VF 20081102", "29816_3 1\n"),
        (
            "29816_4 U 1-29838@127.0.0.1 127.0.0.1 15070 29838E2ETag1;1",
            "29816_4 35000 192.0.2.1\n",
        ),
        (
            "29815_4 L 1-29838@127.0.0.1 127.0.0.1 15080 29838E2ETag1;1 29831E2EUas1;1",
            "29815_4 35002 192.0.2.1\n",
        ),
        (
            "29815_5 D 1-29838@127.0.0.1 29838E2ETag1 29831E2EUas1",
            "29815_5 0\n",
        ),
    ];
    for (request, reply) in transcript {
        assert_eq!(exchange(request), reply, "{request}");
    }
}

#[test]
fn kamailio_commands_parse_to_the_expected_fields() {
    let Ok(Command::Update(u)) = parse("U 1-29838@127.0.0.1 127.0.0.1 15070 29838E2ETag1;1") else {
        panic!("U parses");
    };
    assert_eq!(u.stream.call_id, "1-29838@127.0.0.1");
    assert_eq!(u.stream.from_tag, tag("29838E2ETag1", Some(1)));
    assert_eq!((&u.stream.to_tag, &u.notify), (&None, &None));
    assert_eq!(
        u.remote_known(),
        Some("127.0.0.1:15070".parse().expect("addr"))
    );
    assert_eq!(u.modifiers, Modifiers::default());

    let Ok(Command::Lookup(l)) =
        parse("L 1-29838@127.0.0.1 127.0.0.1 15080 29838E2ETag1;1 29831E2EUas1;1")
    else {
        panic!("L parses");
    };
    assert_eq!(l.stream.to_tag, Some(tag("29831E2EUas1", Some(1))));

    let d = parse("D 1-29838@127.0.0.1 29838E2ETag1 29831E2EUas1").expect("D parses");
    let stream = StreamRef {
        call_id: "1-29838@127.0.0.1".into(),
        from_tag: tag("29838E2ETag1", None),
        to_tag: Some(tag("29831E2EUas1", None)),
    };
    assert_eq!(
        d,
        Command::Delete {
            stream,
            weak: false
        }
    );
}

#[test]
fn codec_modifiers_and_lower_case() {
    let Ok(Command::Update(u)) = parse("Uc8,0,101 c@h 10.0.0.5 4000 ft;1") else {
        panic!("U")
    };
    assert_eq!(u.modifiers.codecs, Some(vec![8, 0, 101]));
    let Ok(Command::Lookup(l)) = parse("lc8,101 c@h 10.0.0.6 4002 tt;1 ft;1") else {
        panic!("L")
    };
    assert_eq!(l.modifiers.codecs, Some(vec![8, 101]));
    assert_eq!(parse("v"), Ok(Command::Version));
    assert_eq!(
        parse("vf 20050322"),
        Ok(Command::VersionFeature {
            date: "20050322".into()
        })
    );
    assert_eq!(
        exchange("k1 Uc8,0,101 c@h 10.0.0.5 4000 ft;1"),
        "k1 35000 192.0.2.1\n"
    );
}

#[test]
fn ipv6_on_hold_and_notify() {
    let Ok(Command::Update(u)) = parse("U6 c 2001:db8::5 0 ft;2 tt;2 unix:/run/k.sock h%3A1")
    else {
        panic!("U6 parses");
    };
    assert!(u.modifiers.ipv6);
    assert_eq!(u.remote_known(), None, "port 0 means not known yet");
    assert_eq!(u.stream.from_tag.index(), 2);
    let notify = u.notify.expect("notify");
    assert_eq!(
        (notify.socket.as_str(), notify.tag.as_slice()),
        ("unix:/run/k.sock", &b"h:1"[..])
    );
    // rtpproxy's six-argument form: notify pair without a to-tag.
    let Ok(Command::Update(u)) = parse("U c 0.0.0.0 5000 ft;1 tcp:10.0.0.1:9 tag") else {
        panic!("U")
    };
    assert_eq!((&u.stream.to_tag, u.remote_known()), (&None, None));
    assert_eq!(u.notify.map(|n| n.socket), Some("tcp:10.0.0.1:9".into()));
    let v6 = Reply::Port {
        port: 35000,
        addr: Some("2001:db8::1".parse().expect("ip")),
    };
    assert_eq!(v6.render(), "35000 2001:db8::1 6");
}

#[test]
fn the_other_commands() {
    let s = |from: &str, to: Option<&str>| StreamRef {
        call_id: "c".into(),
        from_tag: tag(from, Some(1)),
        to_tag: to.map(|t| tag(t, Some(1))),
    };
    let q = Command::Query {
        stream: s("f", Some("t")),
        verbose: true,
        stats: vec![],
    };
    assert_eq!(parse("Qv c f;1 t;1"), Ok(q));
    let q = Command::Query {
        stream: s("f", Some("t")),
        verbose: false,
        stats: vec![QueryStat::RtpaNsent, QueryStat::RtpaJmax],
    };
    assert_eq!(parse("Q c f;1 t;1 rtpa_nsent rtpa_jmax"), Ok(q));
    assert_eq!(
        parse("Ibl"),
        Ok(Command::Info {
            brief: true,
            load: true
        })
    );
    assert_eq!(
        parse("Gv nsess_created npkts_rcvd"),
        Ok(Command::GetStats {
            verbose: true,
            names: vec!["nsess_created".into(), "npkts_rcvd".into()]
        })
    );
    assert_eq!(parse("X"), Ok(Command::DeleteAll));
    let p = Command::Play {
        stream: s("f", None),
        prompt: "/p/moh".into(),
        codecs: PlayCodecs::List(vec![0, 8]),
        count: 3,
    };
    assert_eq!(parse("P3 c /p/moh 0,8 f;1"), Ok(p));
    let Ok(Command::Play { codecs, count, .. }) = parse("P c moh session f;1 t;1") else {
        panic!("P")
    };
    assert_eq!((codecs, count), (PlayCodecs::Session, 1));
    assert_eq!(
        parse("S c f;1"),
        Ok(Command::StopPlay {
            stream: s("f", None)
        })
    );
    assert_eq!(
        parse("Rs c f;1 t;1"),
        Ok(Command::Record {
            stream: s("f", Some("t")),
            single_file: true
        })
    );
    let c = Command::Copy {
        stream: s("f", None),
        target: "udp:10.0.0.9:5000".into(),
        single_file: false,
    };
    assert_eq!(parse("C c udp:10.0.0.9:5000 f;1"), Ok(c));
    assert_eq!(
        parse("Na c f;1"),
        Ok(Command::NoRecord {
            stream: s("f", None),
            all: true
        })
    );
    assert_eq!(
        parse("Dw c f;1"),
        Ok(Command::Delete {
            stream: s("f", None),
            weak: true
        })
    );
}

#[test]
fn every_parse_error_has_its_code() {
    use ErrorCode::*;
    let cases = [
        ("", MissingCommand),
        ("Y", UnknownCommand),
        ("é", UnknownCommand),
        ("V 1", WrongArgCount),
        ("VF", WrongArgCount),
        ("VF 1 2", WrongArgCount),
        ("X now", WrongArgCount),
        ("I x", WrongArgCount),
        ("U c 1.2.3.4 5", WrongArgCount),
        ("U c 1.2.3.4 5 f t s n extra", WrongArgCount),
        ("L c 1.2.3.4 5 f", WrongArgCount),
        ("D c", WrongArgCount),
        ("Q c", WrongArgCount),
        ("P c moh 0 ", WrongArgCount),
        ("S c f t x", WrongArgCount),
        ("C c target", WrongArgCount),
        ("N c", WrongArgCount),
        ("R c f t x", WrongArgCount),
        ("Vx", ModifiersNotAllowed),
        ("VFx 20040107", ModifiersNotAllowed),
        ("Xa", ModifiersNotAllowed),
        ("Sa c f", ModifiersNotAllowed),
        ("U c 1.2.3.4 5 f && Q", SubcommandNotAllowed),
        ("Ux c 1.2.3.4 5 f", UnknownModifier),
        ("Lq c 1.2.3.4 5 f t", UnknownModifier),
        ("Dx c f", UnknownModifier),
        ("Qx c f", UnknownModifier),
        ("Ix", UnknownModifier),
        ("Gx", UnknownModifier),
        ("Rx c f", UnknownModifier),
        ("Cx c t f", UnknownModifier),
        ("Nx c f", UnknownModifier),
        ("Uiei c 1.2.3.4 5 f", BadInternalBridge),
        ("Ueie c 1.2.3.4 5 f", BadExternalBridge),
        ("Uz0 c 1.2.3.4 5 f", BadPtime),
        ("Uc300 c 1.2.3.4 5 f", BadCodecList),
        ("P c moh 0,x f", BadCodecList),
        ("Ul1.2 c 1.2.3.4 5 f", BadLocalModifier),
        ("Ur c 1.2.3.4 5 f", BadRouteModifier),
        ("Px c moh 0 f", BadPlayCount),
        ("P99999999999 c moh 0 f", BadPlayCount),
        ("U c 1.2.3.4 5 f;0", BadTag),
        ("D c f t;x", BadTag),
        ("U c 1.2.3.4 5 f t s bad%zz", BadNotifyTag),
        ("U c 1.2.3.4 70000 f", BadRemoteAddress),
        ("U c ::1 5 f", BadRemoteAddress),
        ("U6 c 1.2.3.4 5 f", BadRemoteAddress),
        ("U c example.com 5 f", BadRemoteAddress),
        ("Q c f t bogus_stat", QueryFailed),
    ];
    for (text, code) in cases {
        assert_eq!(parse(text), Err(code), "{text:?}");
        let reply = exchange(&format!("ck {text}"));
        if text.is_empty() {
            assert_eq!(reply, "E5\n");
        } else {
            assert_eq!(reply, format!("ck E{}\n", code.code()), "{text:?}");
        }
    }
    let many = format!("G{}", " n".repeat(super::parse::MAX_ARGS + 1));
    assert_eq!(parse(&many), Err(WrongArgCount));
}
