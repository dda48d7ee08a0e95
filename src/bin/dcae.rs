fn main() -> std::process::ExitCode {
    dcae::cli::main()
}
