fn main() -> std::process::ExitCode {
    kvreplica::cli::main()
}
