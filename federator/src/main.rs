fn main() {
    eprintln!("causeway-federator: not implemented yet");
    std::process::exit(64);
}
