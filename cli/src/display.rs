//! The guest's screen on the terminal (`--display vga`), the screen as text
//! (`--screen FILE`), and the hint for a guest that writes the screen nobody shows.
//!
//! The display is a thread that redraws the VGA text screen ~30 times a second from
//! guest RAM (through a `RamReader`, so the vCPU is never disturbed) in the terminal's
//! alternate screen, with the VGA's 16 colours as ANSI colours and the CRTC's cursor.
//! Below the 25 rows, when the terminal is tall enough, a pane shows the last lines of
//! the serial console (COM1) and bt86's own messages (the Ctrl-A escapes). All of COM1's
//! output is printed to the normal screen after the display ends, so none is lost.
//! The full-screen view is left on every way out ([`leave`]).

use bt86_runtime::devices::vga::{Cell, TextScreen, COLUMNS, ROWS};
use bt86_runtime::devices::VgaState;
use bt86_runtime::memory::RamReader;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often the screen is redrawn when it changed.
const FRAME: Duration = Duration::from_millis(33);
/// Serial output kept for the pane and for printing after the display ends.
const SERIAL_KEEP: usize = 256 * 1024;

/// The terminal is in the alternate screen: [`leave`] has something to undo.
static ACTIVE: AtomicBool = AtomicBool::new(false);

const ENTER_SEQ: &str = "\x1b[?1049h\x1b[?25l\x1b[2J";
const LEAVE_SEQ: &str = "\x1b[0m\x1b[?25h\x1b[?1049l";

/// Leaves the full-screen view if it is on (any thread, any number of times).
pub fn leave() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(LEAVE_SEQ.as_bytes());
        let _ = out.flush();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serial output and messages shown in the pane; a `Write` for the UART.
#[derive(Clone, Default)]
pub struct SerialPane(Arc<Mutex<PaneState>>);

#[derive(Default)]
struct PaneState {
    /// What the pane shows: COM1's output and bt86's messages.
    bytes: Vec<u8>,
    /// COM1's output alone, printed after the display ends.
    serial: Vec<u8>,
    changed: bool,
}

/// Appends to `buf`, keeping its last [`SERIAL_KEEP`] bytes.
fn append_bounded(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(data);
    if buf.len() > SERIAL_KEEP {
        let cut = buf.len() - SERIAL_KEEP;
        buf.drain(..cut);
    }
}

impl SerialPane {
    /// Shows a message of bt86's own in the pane (not printed again at the end).
    pub fn message(&self, text: &str) {
        let mut st = lock(&self.0);
        append_bounded(&mut st.bytes, text.replace("\r\n", "\n").as_bytes());
        st.changed = true;
    }

    /// The last `n` lines, control characters dropped.
    fn last_lines(&self, n: usize) -> Vec<String> {
        let st = lock(&self.0);
        let text = String::from_utf8_lossy(&st.bytes);
        let lines: Vec<String> = text
            .split('\n')
            .map(|l| l.chars().filter(|c| !c.is_control()).take(COLUMNS).collect())
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    fn take_changed(&self) -> bool {
        std::mem::take(&mut lock(&self.0).changed)
    }

    /// COM1's output kept, for printing after the display ends.
    pub fn contents(&self) -> Vec<u8> {
        lock(&self.0).serial.clone()
    }
}

impl Write for SerialPane {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = lock(&self.0);
        append_bounded(&mut st.bytes, buf);
        append_bounded(&mut st.serial, buf);
        st.changed = true;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// ANSI colour numbers in VGA order (VGA: black blue green cyan red magenta brown grey).
const ANSI_OF_VGA: [u8; 8] = [0, 4, 2, 6, 1, 5, 3, 7];

/// The SGR sequence for a VGA attribute (blink shown as a bright background is not
/// attempted: bit 7 is ignored).
fn sgr(attr: u8) -> String {
    let fg = attr & 0x0f;
    let bg = (attr >> 4) & 0x07;
    let fg = if fg < 8 { 30 + ANSI_OF_VGA[usize::from(fg)] } else { 90 + ANSI_OF_VGA[usize::from(fg - 8)] };
    format!("\x1b[0;{fg};{}m", 40 + ANSI_OF_VGA[usize::from(bg)])
}

/// Terminal escape sequences that draw `row` of `cells` at terminal row `row + 1`.
fn draw_row(row: usize, cells: &[Cell], out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(out, "\x1b[{};1H", row + 1);
    let mut attr = None;
    for c in cells {
        if attr != Some(c.attr) {
            out.push_str(&sgr(c.attr));
            attr = Some(c.attr);
        }
        out.push(bt86_runtime::devices::vga::cp437(c.ch));
    }
    out.push_str("\x1b[0m");
}

/// One frame: the rows that changed since `last` (all if None), the pane, the cursor.
fn frame(screen: &TextScreen, last: Option<&TextScreen>, pane: Option<(usize, &[String])>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for r in 0..ROWS {
        if last.is_none_or(|l| l.row(r) != screen.row(r)) {
            draw_row(r, screen.row(r), &mut out);
        }
    }
    if let Some((height, lines)) = pane {
        let title = "── COM1 ── Ctrl-A h: escapes ";
        let _ = write!(out, "\x1b[{};1H\x1b[0;2m{title}{}\x1b[0m", ROWS + 1, "─".repeat(COLUMNS - title.chars().count()));
        for i in 0..height {
            let line = lines.get(i).map_or("", String::as_str);
            let _ = write!(out, "\x1b[{};1H\x1b[2K{line}", ROWS + 2 + i);
        }
    }
    match screen.cursor {
        Some((r, c)) => {
            let _ = write!(out, "\x1b[{};{}H\x1b[?25h", r + 1, c + 1);
        }
        None => out.push_str("\x1b[?25l"),
    }
    out
}

/// The live display; dropping it stops the thread and leaves the full-screen view.
pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pane: SerialPane,
}

impl Display {
    /// Starts drawing the guest's screen on the terminal (standard output).
    pub fn start(ram: RamReader, vga: Arc<VgaState>, pane: SerialPane) -> std::io::Result<Self> {
        let rows = rustix::termios::tcgetwinsize(std::io::stdout()).map(|w| usize::from(w.ws_row)).unwrap_or(0);
        let pane_height = rows.saturating_sub(ROWS + 1);
        {
            let mut out = std::io::stdout().lock();
            out.write_all(ENTER_SEQ.as_bytes())?;
            out.flush()?;
        }
        ACTIVE.store(true, Ordering::SeqCst);
        let stop = Arc::new(AtomicBool::new(false));
        let (st, p) = (stop.clone(), pane.clone());
        let thread = std::thread::Builder::new().name("bt86-display".into()).spawn(move || {
            let mut last: Option<TextScreen> = None;
            loop {
                let stopping = st.load(Ordering::Acquire);
                if let Ok(screen) = TextScreen::read(&ram, &vga) {
                    let pane_changed = p.take_changed();
                    if last.as_ref() != Some(&screen) || pane_changed || last.is_none() {
                        let lines = p.last_lines(pane_height);
                        let text = frame(&screen, last.as_ref(), (pane_height > 0).then_some((pane_height, &lines[..])));
                        let mut out = std::io::stdout().lock();
                        if !ACTIVE.load(Ordering::SeqCst) {
                            return;
                        }
                        let _ = out.write_all(text.as_bytes());
                        let _ = out.flush();
                        last = Some(screen);
                    }
                }
                if stopping {
                    return;
                }
                std::thread::sleep(FRAME);
            }
        })?;
        Ok(Self { stop, thread: Some(thread), pane })
    }

    /// Draws a last frame, leaves the full-screen view and prints the serial output.
    pub fn finish(mut self) {
        self.end();
        let bytes = self.pane.contents();
        if !bytes.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&bytes);
            let _ = out.flush();
        }
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        leave();
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.end();
    }
}

/// Says once, on standard error, that the guest draws on a screen nobody sees: a thread
/// that looks at the text buffer a few times a second until it is told to stop.
pub struct Hint {
    stop: Arc<AtomicBool>,
    shown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    ram: Arc<RamReader>,
    vga: Arc<VgaState>,
}

const HINT: &str = "bt86: the guest writes to the VGA text screen: see it with --display vga, or save it at exit with --screen FILE";

impl Hint {
    pub fn start(ram: RamReader, vga: Arc<VgaState>) -> Self {
        let ram = Arc::new(ram);
        let stop = Arc::new(AtomicBool::new(false));
        let shown = Arc::new(AtomicBool::new(false));
        let (st, sh, r, v) = (stop.clone(), shown.clone(), ram.clone(), vga.clone());
        let thread = std::thread::Builder::new()
            .name("bt86-screen-hint".into())
            .spawn(move || {
                while !st.load(Ordering::Acquire) {
                    if Self::check(&r, &v, &sh) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
            .ok();
        Self { stop, shown, thread, ram, vga }
    }

    /// Prints the hint if the screen has text and it was not printed yet; true once
    /// printed.
    fn check(ram: &RamReader, vga: &VgaState, shown: &AtomicBool) -> bool {
        match TextScreen::read(ram, vga) {
            Ok(s) if !s.is_blank() => {
                if !shown.swap(true, Ordering::SeqCst) {
                    // The terminal may be raw: end the line with CR LF.
                    eprint!("{HINT}\r\n");
                }
                true
            }
            _ => false,
        }
    }

    /// Stops the thread, looking at the screen a last time.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Self::check(&self.ram, &self.vga, &self.shown);
    }
}

/// Writes the screen as plain text to `path`.
pub fn write_screen(path: &std::path::Path, ram: &RamReader, vga: &VgaState) -> std::io::Result<()> {
    let screen = TextScreen::read(ram, vga)?;
    std::fs::write(path, screen.to_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_map_vga_to_ansi() {
        assert_eq!(sgr(0x07), "\x1b[0;37;40m", "grey on black");
        assert_eq!(sgr(0x1f), "\x1b[0;97;44m", "white on blue");
        assert_eq!(sgr(0x4e), "\x1b[0;93;41m", "yellow on red");
        assert_eq!(sgr(0x06), "\x1b[0;33;40m", "brown");
    }

    #[test]
    fn frame_draws_changed_rows_and_the_cursor() {
        let blank = TextScreen { cells: vec![Cell { ch: b' ', attr: 7 }; COLUMNS * ROWS], cursor: Some((0, 0)) };
        let mut s = blank.clone();
        s.cells[COLUMNS * 3] = Cell { ch: b'X', attr: 0x1f };
        s.cursor = Some((3, 1));
        let f = frame(&s, Some(&blank), None);
        assert!(f.contains("\x1b[4;1H") && f.contains('X') && !f.contains("\x1b[1;1H"), "{f:?}");
        assert!(f.ends_with("\x1b[4;2H\x1b[?25h"), "{f:?}");
        let lines = vec!["hello".to_string()];
        let f = frame(&s, None, Some((2, &lines)));
        assert!(f.contains("\x1b[1;1H") && f.contains("COM1") && f.contains("\x1b[27;1H\x1b[2Khello"), "{f:?}");
    }

    #[test]
    fn pane_keeps_the_last_lines() {
        let p = SerialPane::default();
        let mut w = p.clone();
        w.write_all(b"one\r\ntwo\nthree").unwrap();
        p.message("bt86: hi\r\n");
        assert_eq!(p.last_lines(3), ["two", "threebt86: hi", ""]);
        assert!(p.take_changed() && !p.take_changed());
        assert_eq!(p.last_lines(10)[0], "one");
        assert_eq!(p.contents(), b"one\r\ntwo\nthree", "messages are not COM1 output");
    }
}
