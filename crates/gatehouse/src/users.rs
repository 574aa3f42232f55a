//! `gatehouse users add`: create (or reset) a dashboard user in the configuration's store.
//! The password is read from the first line of stdin, never from the command line.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use gatehouse_store::admins::Role;

pub async fn add(config: &Path, email: &str, name: &str, role: &str) -> ExitCode {
    let fail = |message: &str| {
        eprintln!("gatehouse users add: {message}");
        ExitCode::FAILURE
    };
    let Some(role) = Role::parse(role) else {
        return fail(&format!("role `{role}`: use admin, editor or viewer"));
    };
    if !email.contains('@') || email.contains(char::is_whitespace) {
        return fail(&format!("`{email}` is not an email address"));
    }
    let config = match gatehouse_config::load_file(config) {
        Ok((config, _)) => config,
        Err(errors) => return fail(&errors.to_string()),
    };
    let Some(store) = &config.store else {
        return fail("the configuration has no `store`");
    };
    let mut line = String::new();
    if let Err(err) = std::io::stdin().lock().read_line(&mut line) {
        return fail(&format!("cannot read the password from stdin: {err}"));
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if let Some(problem) = gatehouse_portal::password_problem(password, email) {
        return fail(&format!("the password is too weak: {problem}"));
    }
    let hash = match gatehouse_policy::auth::basic::hash_password(password) {
        Ok(hash) => hash,
        Err(message) => return fail(&message),
    };
    let data = match gatehouse_store::Store::open(&store.url.value.0).await {
        Ok(data) => data,
        Err(err) => return fail(&err.to_string()),
    };
    let name = if name.is_empty() { email } else { name };
    match data.upsert_admin_user(email, name, &hash, role).await {
        Ok(user) => {
            let details = serde_json::json!({"email": user.email, "role": user.role});
            if let Err(err) = data
                .audit(
                    "cli",
                    "admin_user.upsert",
                    &format!("admin_user:{}", user.id),
                    &details,
                )
                .await
            {
                return fail(&format!(
                    "the user is saved, the audit log entry is not: {err}"
                ));
            }
            println!(
                "dashboard user {} ({}) saved",
                user.email,
                user.role.as_str()
            );
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err.to_string()),
    }
}
