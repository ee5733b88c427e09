//! `bulkhead modem emulate ...`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};

use crate::emulator::{self, Line};

/// Hayes modem model.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Present a Hayes-compatible modem on a PTY whose phone line is TCP.
    Emulate(EmulateArgs),
}

#[derive(Debug, ClapArgs)]
pub struct EmulateArgs {
    /// Path of a symlink to the modem's PTY (what a program opens as its serial line).
    #[arg(long)]
    pub link: PathBuf,
    /// NUMBER=TARGET, repeatable. TARGET is HOST:PORT (a plain TCP service: CONNECT as
    /// soon as TCP connects), modem:HOST:PORT (another modem model's --listen address:
    /// CONNECT when it answers, BUSY when its line is in use, NO ANSWER after S7 seconds),
    /// or busy, no-answer, no-dialtone (that result at once).
    #[arg(long, value_name = "NUMBER=TARGET")]
    pub phonebook: Vec<String>,
    /// Incoming calls: a TCP connection to this address rings the modem.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Speed reported in CONNECT.
    #[arg(long, default_value_t = 33600)]
    pub speed: u32,
    /// Milliseconds between RINGs.
    #[arg(long, default_value_t = 2000)]
    pub ring_interval_ms: u64,
}

pub fn parse_phonebook(entries: &[String]) -> anyhow::Result<HashMap<String, Line>> {
    entries
        .iter()
        .map(|e| {
            let (n, t) = e
                .split_once('=')
                .with_context(|| format!("{e:?}: expected NUMBER=TARGET"))?;
            let line = t.parse::<Line>().map_err(anyhow::Error::msg)?;
            Ok((n.trim().to_string(), line))
        })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Command::Emulate(a) = args.command;
    let cfg = emulator::Config {
        link: a.link,
        phonebook: parse_phonebook(&a.phonebook)?,
        listen: a.listen,
        speed: a.speed,
        ring_interval: Duration::from_millis(a.ring_interval_ms),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(emulator::run(cfg))
}
