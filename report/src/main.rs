//! `report`: turns sweep results into a static site (not built yet; see the report issue).

fn main() {
    eprintln!("report: not implemented yet");
    std::process::exit(2);
}
