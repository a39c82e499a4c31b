//! `ringnode`: the leasering demo (placeholder until the demo lands).
fn main() {
    eprintln!("ringnode: the demo is not built yet");
    std::process::exit(1);
}
