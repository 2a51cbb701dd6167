//! `rst-trace top`: a live view of who is resetting what, redrawn every second, for the middle
//! of an incident. The pipeline is the main command's, filters included; its sink counts into
//! [`TopState`] instead of printing lines, and this module owns the terminal: ratatui on the
//! alternate screen, restored on exit and on a panic (`ratatui::init`), keys read on a thread
//! of their own.

mod state;
mod ui;

use std::io::IsTerminal as _;

use anyhow::{Context as _, Result, bail};
// crossterm itself, not ratatui's re-export: the same crate, with the key reader chosen in
// Cargo.toml (`use-dev-tty`).
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::DefaultTerminal;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

pub use self::state::TopState;
use self::ui::View;

/// Refuses to start without a terminal: the view is full-screen (`--summary --interval 1` is
/// the plain-text equivalent).
pub fn require_terminal() -> Result<(), String> {
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        Ok(())
    } else {
        Err("rst-trace top needs a terminal (stdin and stdout are not both one): for plain text use --summary --interval 1".into())
    }
}

/// What a key asks for.
pub enum Action {
    Quit,
    Redraw,
    Nothing,
}

/// The terminal, the keys and the view's choices.
pub struct Ui {
    terminal: DefaultTerminal,
    /// The terminal's events; an `Err` (the last) when reading it failed.
    pub keys: UnboundedReceiver<std::io::Result<Event>>,
    view: View,
    /// The tracer's CPU time (clock ticks) at the last tick.
    cpu_ticks: u64,
}

impl Ui {
    pub fn start() -> Result<Self> {
        if let Err(e) = require_terminal() {
            bail!(e);
        }
        let terminal = ratatui::init();
        let (tx, keys) = unbounded_channel();
        std::thread::Builder::new()
            .name("rst-top-keys".into())
            .spawn(move || {
                // A read error ends the reader: it is sent, so that the view stops with it
                // instead of going on deaf to `q`.
                loop {
                    let ev = event::read();
                    let failed = ev.is_err();
                    if tx.send(ev).is_err() || failed {
                        break;
                    }
                }
            })?;
        Ok(Self {
            terminal,
            keys,
            view: View::default(),
            cpu_ticks: cpu_ticks(),
        })
    }

    /// A second passed: the rates move on and the screen is redrawn (unless paused).
    pub fn tick(&mut self, s: &mut TopState) -> Result<()> {
        s.tick();
        let now = cpu_ticks();
        let per_s = procfs::ticks_per_second().max(1) as f64;
        self.view.cpu_percent = 100.0 * now.saturating_sub(self.cpu_ticks) as f64 / per_s;
        self.cpu_ticks = now;
        if self.view.paused {
            return Ok(());
        }
        self.draw(s)
    }

    pub fn draw(&mut self, s: &TopState) -> Result<()> {
        let view = self.view;
        self.terminal
            .draw(|f| ui::draw(f, s, &view))
            .context("rst-trace top: drawing on the terminal (is it gone?)")?;
        Ok(())
    }

    /// Applies a key (or a resize).
    pub fn handle(&mut self, ev: &Event) -> Action {
        let v = &mut self.view;
        let key = match ev {
            Event::Resize(..) => return Action::Redraw,
            Event::Key(k) if k.kind == KeyEventKind::Press => k,
            _ => return Action::Nothing,
        };
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return Action::Quit;
            }
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Tab => v.calls = !v.calls,
            KeyCode::Char('g') => {
                v.group = v.group.next();
                v.selected = 0;
            }
            KeyCode::Char('s') => v.sort = v.sort.next(),
            KeyCode::Char('p') => v.paused = !v.paused,
            KeyCode::Char('?') => v.help = !v.help,
            KeyCode::Esc => v.help = false,
            KeyCode::Up => v.selected = v.selected.saturating_sub(1),
            KeyCode::Down => v.selected += 1,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }
}

impl Drop for Ui {
    /// The terminal as it was: main screen, cooked mode, cursor shown.
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// This process's user + system CPU time so far, in clock ticks.
fn cpu_ticks() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| s.utime + s.stime)
        .unwrap_or(0)
}
