//! Command text to [`Command`]. Checks run in rtpproxy's order (command letter, argument count,
//! modifiers, then each field) so a controller sees the code it would see from rtpproxy
//! whenever rtpproxy's code is one that may be sent (see [`super::error`]).
//!
//! Deliberate differences from rtpproxy, all on input no known controller sends:
//! - `&&` sub-commands answer E3 once the main command has parsed (rtpproxy checks them
//!   before the fields, and supports them);
//! - `L` requires its to-tag (rtpproxy tolerates its absence);
//! - `Q` statistic names are checked here (E62) rather than after the session lookup;
//! - unknown modifiers are E35 on every command (rtpproxy uses E2-E9 depending on the
//!   command, some of which would disable an OpenSIPS node);
//! - addresses are numeric literals only; rtpproxy may resolve host names.

use super::command::{Command, Modifiers, Notify, PlayCodecs, QueryStat, StreamRef, UpdateLookup};
use super::error::ErrorCode;
use super::fields;

/// Most arguments after the command word; only `G` can get near it (one per counter named).
pub const MAX_ARGS: usize = 64;

/// Most statistics one `Q` may name (each known one once, with room for repeats).
pub const MAX_QUERY_STATS: usize = 2 * QueryStat::ALL.len();

/// Parses one command (cookie already removed). Never panics, whatever the text.
pub fn parse(text: &str) -> Result<Command, ErrorCode> {
    // One token more than allowed is enough to tell "too many" (E1) from a valid count.
    let tokens: Vec<&str> = text.split_ascii_whitespace().take(MAX_ARGS + 2).collect();
    let Some((&head, args)) = tokens.split_first() else {
        return Err(ErrorCode::MissingCommand);
    };
    let mut chars = head.chars();
    let letter = chars.next().map(|c| c.to_ascii_uppercase());
    let mods = chars.as_str();
    // Sub-commands follow `&&`; they are checked after the main command's shape, as rtpproxy
    // does, but never executed: capability 20191015 is not announced.
    let main_len = args.iter().position(|&a| a == "&&").unwrap_or(args.len());
    let (args, subcommands) = args.split_at(main_len);
    let command = match letter {
        Some('V') => version(mods, args)?,
        Some('U') => Command::Update(update_lookup(mods, args, true)?),
        Some('L') => Command::Lookup(update_lookup(mods, args, false)?),
        Some('D') => delete(mods, args)?,
        Some('Q') => query(mods, args)?,
        Some('I') => info(mods, args)?,
        Some('G') => {
            count(args, 0, MAX_ARGS)?;
            let [verbose] = flags(mods, ['v'])?;
            let names = args.iter().map(|&n| n.to_owned()).collect();
            Command::GetStats { verbose, names }
        }
        Some('X') => {
            count(args, 0, 0)?;
            no_mods(mods)?;
            Command::DeleteAll
        }
        Some('P') => play(mods, args)?,
        Some('S') => {
            count(args, 2, 3)?;
            no_mods(mods)?;
            Command::StopPlay {
                stream: stream(args[0], args[1], args.get(2))?,
            }
        }
        Some('R') => {
            count(args, 2, 3)?;
            let [single_file] = flags(mods, ['s'])?;
            let stream = stream(args[0], args[1], args.get(2))?;
            Command::Record {
                stream,
                single_file,
            }
        }
        Some('C') => {
            count(args, 3, 4)?;
            let [single_file] = flags(mods, ['s'])?;
            let stream = stream(args[0], args[2], args.get(3))?;
            let target = args[1].to_owned();
            Command::Copy {
                stream,
                target,
                single_file,
            }
        }
        Some('N') => {
            count(args, 2, 3)?;
            let [all] = flags(mods, ['a'])?;
            let stream = stream(args[0], args[1], args.get(2))?;
            Command::NoRecord { stream, all }
        }
        _ => return Err(ErrorCode::UnknownCommand),
    };
    if !subcommands.is_empty() {
        return Err(ErrorCode::SubcommandNotAllowed);
    }
    Ok(command)
}

fn count(args: &[&str], min: usize, max: usize) -> Result<(), ErrorCode> {
    if (min..=max).contains(&args.len()) {
        Ok(())
    } else {
        Err(ErrorCode::WrongArgCount)
    }
}

fn no_mods(mods: &str) -> Result<(), ErrorCode> {
    if mods.is_empty() {
        Ok(())
    } else {
        Err(ErrorCode::ModifiersNotAllowed)
    }
}

/// Single-letter flags from `allowed` (case-insensitive), one bool per allowed letter; any
/// other letter is an unknown modifier.
fn flags<const N: usize>(mods: &str, allowed: [char; N]) -> Result<[bool; N], ErrorCode> {
    let mut set = [false; N];
    for m in mods.chars() {
        let m = m.to_ascii_lowercase();
        let i = allowed
            .iter()
            .position(|&a| a == m)
            .ok_or(ErrorCode::UnknownModifier)?;
        set[i] = true;
    }
    Ok(set)
}

fn stream(call_id: &str, from: &str, to: Option<&&str>) -> Result<StreamRef, ErrorCode> {
    Ok(StreamRef {
        call_id: call_id.to_owned(),
        from_tag: fields::tag(from)?,
        to_tag: to.map(|t| fields::tag(t)).transpose()?,
    })
}

fn version(mods: &str, args: &[&str]) -> Result<Command, ErrorCode> {
    match mods.strip_prefix(['F', 'f']) {
        Some(rest) => {
            count(args, 1, 1)?;
            no_mods(rest)?;
            Ok(Command::VersionFeature {
                date: args[0].to_owned(),
            })
        }
        None => {
            count(args, 0, 0)?;
            no_mods(mods)?;
            Ok(Command::Version)
        }
    }
}

/// `U callid addr port from [to] [notify_socket notify_tag]` takes 4 to 7 arguments; with 6,
/// rtpproxy reads the last two as the notify pair and leaves the to-tag out. `L` takes 5:
/// its to-tag is what lets the answer find the offer's stream.
fn update_lookup(mods: &str, args: &[&str], update: bool) -> Result<UpdateLookup, ErrorCode> {
    if update {
        count(args, 4, 7)?;
    } else {
        count(args, 5, 5)?;
    }
    let modifiers: Modifiers = fields::modifiers(mods)?;
    let remote = fields::remote(args[1], args[2], modifiers.ipv6)?;
    let (to, notify) = match args.len() {
        6 => (None, Some((args[4], args[5]))),
        7 => (args.get(4), Some((args[5], args[6]))),
        _ => (args.get(4), None),
    };
    let stream = stream(args[0], args[3], to)?;
    let notify = match notify {
        Some((socket, tag)) => Some(Notify {
            socket: socket.to_owned(),
            tag: fields::url_decode(tag)?,
        }),
        None => None,
    };
    Ok(UpdateLookup {
        modifiers,
        stream,
        remote,
        notify,
    })
}

fn delete(mods: &str, args: &[&str]) -> Result<Command, ErrorCode> {
    count(args, 2, 3)?;
    let [weak] = flags(mods, ['w'])?;
    let stream = stream(args[0], args[1], args.get(2))?;
    Ok(Command::Delete { stream, weak })
}

fn query(mods: &str, args: &[&str]) -> Result<Command, ErrorCode> {
    count(args, 2, 3 + MAX_QUERY_STATS)?;
    let [verbose] = flags(mods, ['v'])?;
    let stream = stream(args[0], args[1], args.get(2))?;
    let stats = args
        .iter()
        .skip(3)
        .map(|&name| QueryStat::from_name(name).ok_or(ErrorCode::QueryFailed))
        .collect::<Result<_, _>>()?;
    Ok(Command::Query {
        stream,
        verbose,
        stats,
    })
}

fn info(mods: &str, args: &[&str]) -> Result<Command, ErrorCode> {
    count(args, 0, 0)?;
    let [brief, load] = flags(mods, ['b', 'l'])?;
    Ok(Command::Info { brief, load })
}

/// `P<n>`: the modifier string is the play count itself.
fn play(mods: &str, args: &[&str]) -> Result<Command, ErrorCode> {
    count(args, 4, 5)?;
    let count = if mods.is_empty() {
        1
    } else {
        fields::digits::<u32>(mods).ok_or(ErrorCode::BadPlayCount)?
    };
    let codecs = match args[2] {
        "session" => PlayCodecs::Session,
        list => PlayCodecs::List(fields::payload_types(list)?),
    };
    Ok(Command::Play {
        stream: stream(args[0], args[3], args.get(4))?,
        prompt: args[1].to_owned(),
        codecs,
        count,
    })
}
