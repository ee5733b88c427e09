//! A Hayes-compatible modem: the command set ([`hayes`]), a model that presents it on a
//! PTY with TCP as the phone line ([`emulator`]), and the DTE side that drives a real or
//! modelled modem over a serial line ([`dte`]).

pub mod cli;
pub mod dte;
pub mod emulator;
pub mod hayes;
pub mod phoneline;
pub mod tty;
