//! `bt86 study`: arguments, then the study crate does the work; this prints it.

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(crate) const EXIT_STATUS_HELP: &str = "\
Exit status of study:
  0   every row is correct under bt (binary translation)
  1   some row is not correct under bt
  2   bad input (e.g. an --html file that cannot be written)
  70  the study could not run";

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
pub(crate) struct StudyArgs {
    /// What to print on stdout: a table (fits 100 columns) or a JSON array of rows.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Also write one self-contained HTML page (figure, explanation, table) to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Run the kvm engine even where /dev/kvm is backed by a software hypervisor (its
    /// results are then that hypervisor's, not VT-x's or AMD-V's).
    #[arg(long)]
    allow_software_kvm: bool,
}

fn create(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot write the HTML page to {}", path.display()))
}

pub(crate) fn main(args: &StudyArgs) -> ExitCode {
    // Open the page first, so a bad path fails before anything runs.
    let page = match args.html.as_deref().map(create).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bt86: {e:#}");
            return ExitCode::from(2);
        }
    };
    let study = match bt86_study::run(&bt86_study::Options { allow_software_kvm: args.allow_software_kvm }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bt86: study: {e:#}");
            return ExitCode::from(70);
        }
    };
    match args.format {
        Format::Text => print!("{}", bt86_study::render::text::render(&study)),
        Format::Json => println!("{}", study.to_json()),
    }
    if let (Some(mut file), Some(path)) = (page, args.html.as_deref()) {
        let written = file
            .write_all(bt86_study::render::html::render(&study).as_bytes())
            .and_then(|()| file.flush())
            .with_context(|| format!("cannot write the HTML page to {}", path.display()));
        if let Err(e) = written {
            eprintln!("bt86: {e:#}");
            return ExitCode::from(2);
        }
    }
    if study.bt_all_correct() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
