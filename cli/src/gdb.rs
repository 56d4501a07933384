//! `--gdb HOST:PORT`, `--gdb-wait` and QEMU's spellings `-s`, `-S`: the socket gdb
//! connects to, bound before the guest runs (a bad address is bad input), and the
//! run under the runtime's gdb stub (`bt86_runtime::gdb`).

use crate::{Engine, RunOpts};
use anyhow::{bail, Context};
use bt86_runtime::gdb::{GdbEnd, GdbError};
use bt86_runtime::Vm;
use std::net::TcpListener;

/// Where `-s` listens, as QEMU's (but on the loopback address only).
const DEFAULT_ADDRESS: &str = "127.0.0.1:1234";

/// The stub's listening socket.
pub(crate) struct GdbListen {
    listener: TcpListener,
}

/// The socket the options ask for, bound; None without --gdb or -s.
pub(crate) fn listen(opts: &RunOpts) -> anyhow::Result<Option<GdbListen>> {
    let session = &opts.session;
    let address = match (&session.gdb, session.gdb_default_port) {
        (Some(a), _) => address(a),
        (None, true) => DEFAULT_ADDRESS.to_string(),
        (None, false) if session.gdb_wait => bail!("--gdb-wait (-S) needs --gdb HOST:PORT or -s"),
        (None, false) => return Ok(None),
    };
    if opts.engine == Engine::Kvm {
        bail!("--gdb works with --engine bt only: the KVM engine has no debugger support");
    }
    let listener = TcpListener::bind(&address).with_context(|| format!("cannot listen for gdb on {address}"))?;
    Ok(Some(GdbListen { listener }))
}

/// `HOST:PORT` as given, with QEMU's `tcp::PORT` and a bare `:PORT` meaning the
/// loopback address.
fn address(arg: &str) -> String {
    let a = arg.strip_prefix("tcp:").unwrap_or(arg);
    if a.starts_with(':') {
        format!("127.0.0.1{a}")
    } else {
        a.to_string()
    }
}

/// Runs the guest under the gdb stub, first waiting for gdb if `wait`; `say`
/// prints a line for the person at the terminal (where gdb should connect,
/// connections coming and going).
pub(crate) fn run(vm: &mut Vm, gdb: &GdbListen, wait: bool, say: &dyn Fn(&str)) -> Result<GdbEnd, GdbError> {
    let at = gdb.listener.local_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    if wait {
        say(&format!("waiting for gdb on {at} (in gdb: target remote {at})"));
    } else {
        say(&format!("gdb stub listening on {at}"));
    }
    bt86_runtime::gdb::serve(vm, &gdb.listener, wait, say)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_style_addresses_mean_the_loopback() {
        assert_eq!(address("tcp::1234"), "127.0.0.1:1234");
        assert_eq!(address(":5000"), "127.0.0.1:5000");
        assert_eq!(address("0.0.0.0:1234"), "0.0.0.0:1234");
        assert_eq!(address("localhost:9"), "localhost:9");
    }

    #[test]
    fn qemu_spellings_parse() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from(["bt86", "run", "--kernel", "k", "-s", "-S"]).expect("parses");
        let crate::Command::Run { opts, .. } = cli.command else { panic!("not run") };
        let s = opts.session;
        assert!(s.gdb_default_port && s.gdb_wait && s.gdb.is_none());
        assert!(crate::Cli::try_parse_from(["bt86", "run", "--kernel", "k", "-s", "--gdb", ":1"]).is_err(), "one address");
    }
}
