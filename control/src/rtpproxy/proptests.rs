//! Property tests: no input makes framing or parsing panic or answer E7-E10, and generated
//! valid commands parse back to exactly the fields they were built from.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::command::{Command, Interface, LocalAddress, Tag};
use super::frame::{self, Mode};
use super::{ErrorCode, parse};

fn never_disables_node(result: &Result<Command, ErrorCode>) -> bool {
    result
        .as_ref()
        .err()
        .is_none_or(|e| !(7..=10).contains(&e.code()))
}

/// Text that looks like commands, to reach deep into the parser rather than failing at E0.
fn command_like() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        "[UuLlDdQqIiGgXxPpSsRrCcNnVv][a-z0-9,.;\\[\\]:%6]{0,12}",
        "[0-9.:a-f]{0,20}",
        "[!-~]{0,16}",
        Just("&&".to_owned()),
    ];
    proptest::collection::vec(word, 0..10).prop_map(|w| w.join(" "))
}

fn tag_strategy() -> impl Strategy<Value = (String, Option<u32>)> {
    (
        "[A-Za-z0-9_.!%*+`'~-]{1,20}",
        proptest::option::of(1u32..=u32::MAX),
    )
}

fn tag_text((tag, media): &(String, Option<u32>)) -> String {
    match media {
        Some(n) => format!("{tag};{n}"),
        None => tag.clone(),
    }
}

fn parsed_tag(tag: &Tag) -> (String, Option<u32>) {
    (tag.tag.clone(), tag.media)
}

#[derive(Debug, Clone)]
struct Mods {
    asymmetric: bool,
    weak: bool,
    bridge: Vec<Interface>,
    ptime: Option<u16>,
    codecs: Option<Vec<u8>>,
    local: Option<LocalAddress>,
    new_port: bool,
}

fn mods_strategy() -> impl Strategy<Value = Mods> {
    let side = prop_oneof![Just(Interface::Internal), Just(Interface::External)];
    let local = prop_oneof![
        any::<[u8; 4]>().prop_map(|o| LocalAddress::Bind(IpAddr::from(o))),
        any::<[u16; 8]>().prop_map(|s| LocalAddress::RouteTo(IpAddr::from(s))),
    ];
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(side, 0..=2),
        proptest::option::of(1u16..=999),
        proptest::option::of(proptest::collection::vec(0u8..=127, 1..6)),
        proptest::option::of(local),
        any::<bool>(),
    )
        .prop_map(
            |(asymmetric, weak, bridge, ptime, codecs, local, new_port)| Mods {
                asymmetric,
                weak,
                bridge,
                ptime,
                codecs,
                local,
                new_port,
            },
        )
}

/// Renders modifiers so that every value is followed by a letter: a value swallows the digits
/// (and `6`) after it, exactly as in rtpproxy.
fn mods_text(m: &Mods, ipv6: bool) -> String {
    let mut s = String::new();
    if ipv6 {
        s.push('6');
    }
    if let Some(ms) = m.ptime {
        s += &format!("z{ms}");
    }
    if let Some(list) = &m.codecs {
        let list: Vec<String> = list.iter().map(u8::to_string).collect();
        s += &format!("C{}", list.join(","));
    }
    s.push(if m.asymmetric { 'a' } else { 'S' });
    match m.local {
        Some(LocalAddress::Bind(ip)) => s += &format!("l{ip}"),
        Some(LocalAddress::RouteTo(ip)) => s += &format!("R[{ip}]"),
        None => {}
    }
    for side in &m.bridge {
        s.push(if *side == Interface::Internal {
            'i'
        } else {
            'E'
        });
    }
    if m.weak {
        s.push('w');
    }
    if m.new_port {
        s.push('N');
    }
    s
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        prop_assert!(never_disables_node(&parse(&text)));
    }

    #[test]
    fn command_like_text_never_panics(text in command_like()) {
        prop_assert!(never_disables_node(&parse(&text)));
    }

    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(f) = frame::split(&bytes, Mode::Datagram) {
            prop_assert!(never_disables_node(&parse(f.command)));
        }
    }

    #[test]
    fn generated_update_and_lookup_round_trip(
        lookup in any::<bool>(),
        mods in mods_strategy(),
        call_id in "[!-~]{1,40}",
        ip in any::<IpAddr>(),
        port in any::<u16>(),
        from in tag_strategy(),
        to in proptest::option::of(tag_strategy()),
    ) {
        let to = if lookup { Some(to.unwrap_or_else(|| ("t".into(), Some(1)))) } else { to };
        let remote = SocketAddr::new(ip, port);
        let ipv6 = remote.is_ipv6();
        let letter = if lookup { "L" } else { "U" };
        let mut text = format!(
            "{letter}{} {call_id} {} {} {}",
            mods_text(&mods, ipv6), remote.ip(), remote.port(), tag_text(&from)
        );
        if let Some(to) = &to {
            text += &format!(" {}", tag_text(to));
        }
        let parsed = parse(&text);
        let ul = match (parsed, lookup) {
            (Ok(Command::Lookup(ul)), true) | (Ok(Command::Update(ul)), false) => ul,
            (other, _) => return Err(TestCaseError::fail(format!("{text}: {other:?}"))),
        };
        let m = &ul.modifiers;
        prop_assert_eq!(m.asymmetric, mods.asymmetric);
        prop_assert_eq!(m.weak, mods.weak);
        prop_assert_eq!(m.new_port, mods.new_port);
        prop_assert_eq!(m.ipv6, ipv6);
        prop_assert_eq!(m.ptime_ms, mods.ptime);
        prop_assert_eq!(&m.codecs, &mods.codecs);
        prop_assert_eq!(m.local, mods.local);
        let sides: Vec<Interface> = m.bridge.iter().flat_map(|b| [Some(b.first), b.second]).flatten().collect();
        prop_assert_eq!(sides, mods.bridge);
        prop_assert_eq!(ul.remote, remote);
        prop_assert_eq!(&ul.stream.call_id, &call_id);
        prop_assert_eq!(parsed_tag(&ul.stream.from_tag), from);
        prop_assert_eq!(ul.stream.to_tag.as_ref().map(parsed_tag), to);
    }

    #[test]
    fn generated_session_commands_round_trip(
        call_id in "[!-~]{1,40}",
        from in tag_strategy(),
        to in proptest::option::of(tag_strategy()),
        flag in any::<bool>(),
    ) {
        let tags = match &to {
            Some(to) => format!("{} {}", tag_text(&from), tag_text(to)),
            None => tag_text(&from),
        };
        for letter in ["D", "Q", "R", "N", "S"] {
            let mods = match (letter, flag) {
                ("D", true) => "W", ("Q", true) => "v", ("R", true) => "S", ("N", true) => "a",
                _ => "",
            };
            let parsed = parse(&format!("{letter}{mods} {call_id} {tags}"));
            let stream = match &parsed {
                Ok(Command::Delete { stream, weak }) => { prop_assert_eq!(*weak, flag); stream }
                Ok(Command::Query { stream, verbose, .. }) => { prop_assert_eq!(*verbose, flag); stream }
                Ok(Command::Record { stream, single_file }) => { prop_assert_eq!(*single_file, flag); stream }
                Ok(Command::NoRecord { stream, all }) => { prop_assert_eq!(*all, flag); stream }
                Ok(Command::StopPlay { stream }) => stream,
                other => return Err(TestCaseError::fail(format!("{letter}: {other:?}"))),
            };
            prop_assert_eq!(&stream.call_id, &call_id);
            prop_assert_eq!(parsed_tag(&stream.from_tag), from.clone());
            prop_assert_eq!(stream.to_tag.as_ref().map(parsed_tag), to.clone());
        }
    }
}
