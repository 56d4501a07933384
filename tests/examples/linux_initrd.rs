//! Writes a busybox initramfs for Debian's i386 kernel, fetching the kernel and busybox
//! first if `target/linux-guest/` does not hold them yet:
//!
//! ```sh
//! cargo run --release -p bt86-tests --example linux_initrd -- shell.gz            # a shell on the console
//! cargo run --release -p bt86-tests --example linux_initrd -- checks.gz --checks  # the end-to-end test's /init
//! cargo run --release -p bt86-tests --example linux_initrd -- mine.gz my-init.sh  # your own /init script
//! ```
//!
//! It prints the `bt86 run` command line that boots it.

use bt86_tests::linux::{LinuxGuest, CHECKS_INIT, SHELL_INIT};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: linux_initrd OUT.gz [--checks | INIT_SCRIPT]");
        return ExitCode::from(2);
    };
    let init = match args.get(1).map(String::as_str) {
        None => SHELL_INIT.to_owned(),
        Some("--checks") => CHECKS_INIT.to_owned(),
        Some(script) => match std::fs::read_to_string(script) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot read {script}: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let written = LinuxGuest::get().and_then(|g| g.write_initramfs(&init, Path::new(out)).map(|()| g));
    match written {
        Ok(guest) => {
            println!("bt86 run --kernel {} --initrd {out} --append console=ttyS0 --mem 256", guest.kernel.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
