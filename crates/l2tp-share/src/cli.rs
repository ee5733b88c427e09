//! `bulkhead l2tp server|client|dial|answer`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bulkhead_modem::tty::Pty;
use clap::{Args as ClapArgs, Subcommand};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::control;
use crate::profile::{self, ClientProfile, Device, ServerProfile};

/// L2TP resource sharing: share modems with clients through L2TP tunnels.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the resource server (LAC) that owns the devices.
    Server(ServerArgs),
    /// Run the client (LNS) daemon that `dial` and `answer` talk to.
    Client(ClientArgs),
    /// Place an outgoing call by directory name or number.
    Dial(DialArgs),
    /// Arm answer mode: the next incoming call is routed to this client.
    Answer(AnswerArgs),
}

#[derive(Debug, ClapArgs)]
pub struct ServerArgs {
    /// L2TP profile (TOML); see docs/l2tp.md.
    #[arg(long, conflicts_with_all = ["listen", "device", "dir"])]
    pub profile: Option<PathBuf>,
    /// Quick use: address to accept tunnels on, ADDR[:PORT] (port 1701 by default).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Quick use: shared secret.
    #[arg(long)]
    pub secret: Option<String>,
    /// Quick use: a modem's tty (takes outgoing and incoming calls), repeatable.
    #[arg(long)]
    pub device: Vec<PathBuf>,
    /// Quick use: directory entry NAME=NUMBER, repeatable.
    #[arg(long, value_name = "NAME=NUMBER")]
    pub dir: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct ClientArgs {
    /// Client profile (TOML); see docs/l2tp.md.
    #[arg(long)]
    pub profile: PathBuf,
    /// Control socket (overrides the profile).
    #[arg(long)]
    pub control: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct CallArgs {
    /// The client daemon's control socket.
    #[arg(long, default_value_os_t = profile::default_control())]
    pub control: PathBuf,
    /// Carry the call on standard input/output instead of a new PTY.
    #[arg(long)]
    pub stdio: bool,
    /// raw (byte stream), ppp (async HDLC ↔ PPP frames), or auto (raw when the server supports it).
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Auto,
    Raw,
    Ppp,
}

#[derive(Debug, ClapArgs)]
pub struct DialArgs {
    /// Directory name (e.g. PRIMARY_ISP) or number.
    pub target: String,
    #[command(flatten)]
    pub call: CallArgs,
}

#[derive(Debug, ClapArgs)]
pub struct AnswerArgs {
    /// Only this line (device name); any line by default.
    #[arg(long)]
    pub line: Option<String>,
    /// How long the server stays armed.
    #[arg(long, default_value_t = 300)]
    pub seconds: u32,
    #[command(flatten)]
    pub call: CallArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Server(a) => {
            let p = server_profile(a)?;
            runtime()?.block_on(crate::server::run(p))
        }
        Command::Client(a) => {
            let p = ClientProfile::load(&a.profile)?;
            let control = a.control.unwrap_or_else(|| p.control.clone());
            let client = crate::client::Client::new(p);
            runtime()?.block_on(async {
                let stop = stop_signals()?;
                let stop = async {
                    let sig = stop.await;
                    tracing::info!(signal = sig, "stopping");
                };
                crate::control::serve_control(client, &control, stop).await
            })
        }
        Command::Dial(a) => {
            let req = format!("DIAL {} {}\n", a.target, mode_word(a.call.mode));
            call_command(&a.call, &req)
        }
        Command::Answer(a) => {
            let req = format!(
                "ANSWER {} {} {}\n",
                a.line.as_deref().unwrap_or("*"),
                a.seconds,
                mode_word(a.call.mode)
            );
            call_command(&a.call, &req)
        }
    }
}

fn call_command(call: &CallArgs, request: &str) -> anyhow::Result<()> {
    let rt = runtime()?;
    let r = rt.block_on(place(call, request));
    // Reading stdin blocks a thread that only more input would free: do not wait for it.
    rt.shutdown_background();
    r
}

/// SIGTERM or SIGINT, caught from now on (SIGINT too when it was ignored at start,
/// as in a background job): resolves with the signal's name.
fn stop_signals() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

fn mode_word(m: ModeArg) -> &'static str {
    match m {
        ModeArg::Auto => "auto",
        ModeArg::Raw => "raw",
        ModeArg::Ppp => "ppp",
    }
}

fn server_profile(a: ServerArgs) -> anyhow::Result<ServerProfile> {
    if let Some(p) = a.profile {
        return ServerProfile::load(&p);
    }
    if a.listen.is_empty() {
        bail!("give --profile FILE, or at least --listen ADDR");
    }
    let listen = a
        .listen
        .iter()
        .map(|l| {
            l.parse::<SocketAddr>()
                .or_else(|_| format!("{l}:{}", bulkhead_l2tp::PORT).parse())
                .with_context(|| format!("--listen {l:?}: expected ADDR[:PORT]"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let directory = a
        .dir
        .iter()
        .map(|d| {
            d.split_once('=')
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .with_context(|| format!("--dir {d:?}: expected NAME=NUMBER"))
        })
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    let devices = a
        .device
        .iter()
        .enumerate()
        .map(|(i, t)| Device {
            name: format!("dev{i}"),
            tty: t.clone(),
            outgoing: true,
            incoming: true,
            dial_timeout: 60,
            forward_incoming: None,
        })
        .collect();
    let p = ServerProfile {
        hostname: "bulkhead-l2tp-server".into(),
        listen,
        secret: a.secret,
        secrets: HashMap::new(),
        vendor_id: bulkhead_l2tp::ext::DEFAULT_VENDOR_ID,
        hello_interval: 60,
        hide_avps: false,
        devices,
        directory,
    };
    p.validate()?;
    Ok(p)
}

/// Sends the request to the client daemon, reports progress on stderr, then carries
/// the call on stdio or a new PTY until it ends. A call cleared by the far end or the
/// server is an error (its reason); a call this command hung up (end of input, SIGINT,
/// SIGTERM) is not.
async fn place(call: &CallArgs, request: &str) -> anyhow::Result<()> {
    let stop = stop_signals()?;
    tokio::pin!(stop);
    let mut s = connect_control(&call.control).await?;
    s.write_all(request.as_bytes()).await?;
    loop {
        let line = tokio::select! {
            l = read_line(&mut s) => l?,
            sig = &mut stop => {
                // Closing the connection cancels the request.
                eprintln!("stopped by {sig} before the call connected");
                return Ok(());
            }
        };
        let mut words = line.splitn(2, ' ');
        match (words.next(), words.next()) {
            (Some("ARMED"), _) => eprintln!("armed: waiting for an incoming call"),
            (Some("CONNECTED"), rest) => {
                eprintln!("connected ({})", rest.unwrap_or(""));
                break;
            }
            (Some("ERROR"), rest) => bail!("{}", rest.unwrap_or("call failed")),
            _ if line.is_empty() => bail!("the client daemon closed the connection"),
            _ => bail!("unexpected reply from the client daemon: {line:?}"),
        }
    }
    let ended = if call.stdio {
        carry(s, tokio::io::stdin(), tokio::io::stdout(), stop).await
    } else {
        let pty = Pty::open()?;
        println!("{}", pty.slave_path.display());
        let (master, _slave) = pty.into_parts();
        let (input, output) = tokio::io::split(master);
        carry(s, input, output, stop).await
    };
    let ended = ended.context("the client daemon closed the connection")?;
    let (who, why) = ended.split_at(ended.len().min(1));
    let why = String::from_utf8_lossy(why);
    if who == b"L" {
        eprintln!("call ended: {why}");
        Ok(())
    } else {
        bail!("call ended: {why}")
    }
}

/// Moves the call between the user's side and the daemon's frames until the daemon
/// says the call is over; returns that frame's payload (`None`: no such frame).
/// At the end of `input` the daemon is told so and the far end's answer still comes;
/// `stop` hangs up.
async fn carry(
    s: UnixStream,
    mut input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = &'static str>>,
) -> Option<Vec<u8>> {
    let (mut r, mut w) = s.into_split();
    let (tx, mut frames) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let writer = async move {
        while let Some(f) = frames.recv().await {
            if w.write_all(&f).await.is_err() {
                break;
            }
        }
        // Keep the write half open: closing it would hang up.
        std::future::pending::<()>().await
    };
    let up_tx = tx.clone();
    let up = async move {
        let mut buf = vec![0u8; 16384];
        loop {
            let mut f = Vec::new();
            match input.read(&mut buf).await {
                Ok(n) if n > 0 => control::encode(control::DATA, &buf[..n], &mut f),
                _ => {
                    control::encode(control::END_OF_INPUT, b"", &mut f);
                    let _ = up_tx.send(f).await;
                    return std::future::pending::<()>().await;
                }
            }
            if up_tx.send(f).await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let down = async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            while let Ok(Some((f, used))) = control::decode(&buf) {
                match f.tag {
                    control::DATA => {
                        // A user who stopped reading does not end the call.
                        let _ = output.write_all(f.payload).await;
                        let _ = output.flush().await;
                    }
                    control::ENDED => return Some(f.payload.to_vec()),
                    _ => {}
                }
                buf.drain(..used);
            }
            if control::decode(&buf).is_err() {
                return None;
            }
            match r.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    };
    tokio::pin!(writer, up, down);
    // Once hung up, how long to wait for the daemon to confirm.
    let mut confirm_by: Option<tokio::time::Instant> = None;
    loop {
        let confirm = async {
            match confirm_by {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            e = &mut down => return e,
            _ = &mut writer => {}
            _ = &mut up, if confirm_by.is_none() => {}
            sig = &mut stop, if confirm_by.is_none() => {
                eprintln!("{sig}: hanging up");
                let mut f = Vec::new();
                control::encode(control::HANG_UP, b"", &mut f);
                let _ = tx.send(f).await;
                confirm_by = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(5));
            }
            _ = confirm => return Some(b"Lhung up (not confirmed by the client daemon)".to_vec()),
        }
    }
}

async fn connect_control(path: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(path).await.with_context(|| {
        format!(
            "connecting to the client daemon at {} (is `bulkhead l2tp client` running?)",
            path.display()
        )
    })
}

/// Reads one line byte by byte, so no call data is consumed.
async fn read_line(s: &mut UnixStream) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b).await? == 0 || b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Top {
            #[command(subcommand)]
            c: super::Command,
        }
        Top::command().debug_assert();
        let t = <Top as clap::Parser>::try_parse_from([
            "x",
            "dial",
            "PRIMARY_ISP",
            "--mode",
            "ppp",
            "--stdio",
        ])
        .unwrap();
        assert!(
            matches!(t.c, super::Command::Dial(d) if d.call.stdio && d.call.mode == super::ModeArg::Ppp)
        );
    }
}
