//! hull's guest agent: PID 1 inside every pod VM.

fn main() {
    eprintln!("hull-agent: the guest agent is not built yet");
    std::process::exit(1);
}
