//! `gatehouse keys`: make credentials for the configuration. The key or password is shown
//! once; only its hash goes into the file.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use gatehouse_policy::auth::{api_key, basic};

/// Print a new API key (first line of stdout) and the YAML entry to paste under the
/// consumer's `api_keys`. The HMAC secret comes from the configuration or an environment
/// variable.
pub fn generate(
    config: Option<&Path>,
    secret_env: Option<&str>,
    prefix: &str,
    expires: Option<&str>,
) -> ExitCode {
    let secret = match (config, secret_env) {
        (_, Some(var)) => match std::env::var(var) {
            Ok(value) => value,
            Err(_) => return fail(&format!("environment variable `{var}` is not set")),
        },
        (Some(path), None) => match gatehouse_config::load_file(path) {
            Ok((config, _)) => match config.authentication.api_key_secret {
                Some(secret) => secret.value.0,
                None => {
                    return fail(&format!(
                        "{}: `authentication.api_key_secret` is not set",
                        path.display()
                    ))
                }
            },
            Err(errors) => return fail(&errors.to_string()),
        },
        (None, None) => return fail("give the configuration (-c FILE) or --secret-env VAR"),
    };
    if secret.len() < 32 {
        return fail("the API key secret must be at least 32 characters");
    }
    if let Some(expires) = expires {
        if gatehouse_config::parse_rfc3339(expires).is_none() {
            return fail(&format!(
                "`{expires}` is not an RFC 3339 time like 2027-01-01T00:00:00Z"
            ));
        }
    }
    let hasher = api_key::KeyHasher::new(secret.as_bytes());
    match api_key::generate(&hasher, prefix) {
        Ok(key) => {
            println!("{}", key.key);
            println!(
                "# add under the consumer's `api_keys` (the key above is not stored anywhere):"
            );
            println!("- id: {}", key.public_id);
            println!("  hash: \"{}\"", key.hash);
            if let Some(expires) = expires {
                println!("  expires: \"{expires}\"");
            }
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

/// Read a password from the first line of stdin and print its argon2id hash.
pub fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(err) = std::io::stdin().lock().read_line(&mut line) {
        return fail(&format!("cannot read the password: {err}"));
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return fail("the password is empty");
    }
    match basic::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("gatehouse keys: {message}");
    ExitCode::FAILURE
}
