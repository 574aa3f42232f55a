//! Dashboard users with roles, their sessions, and the audit log. Dashboard users are not
//! developer accounts: separate tables, separate cookies, no way from one to the other.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::catalog::generated_id;
use crate::{now, to_json, Store, StoreError};

/// What a dashboard user may do.
#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also manages products, plans, subscriptions, applications and keys.
    Editor,
    /// Also manages developer accounts and dashboard users.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct AdminUser {
    pub id: String,
    pub email: String,
    pub name: String,
    #[serde(skip_serializing, default)]
    #[schemars(skip)]
    pub password_hash: String,
    pub role: Role,
    pub disabled_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct AdminSession {
    pub user: AdminUser,
    pub csrf: String,
    pub expires_at: i64,
}

/// One admin action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
}

const USER_COLUMNS: &str = "id, email, name, password_hash, role, disabled_at, created_at";

fn user_from_row(row: &AnyRow) -> Result<AdminUser, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(AdminUser {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Malformed(format!("role `{role}`")))?,
        disabled_at: row.try_get("disabled_at")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Adds a dashboard user, or sets the name, password and role of the one with this
    /// email (and enables it again).
    pub async fn upsert_admin_user(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<AdminUser, StoreError> {
        let email = email.trim().to_lowercase();
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query("SELECT id FROM admin_users WHERE email = $1")
            .bind(email.clone())
            .fetch_optional(&mut *tx)
            .await?;
        match existing {
            Some(row) => {
                let id: String = row.try_get("id")?;
                sqlx::query(
                    "UPDATE admin_users SET name = $1, password_hash = $2, role = $3, disabled_at = NULL WHERE id = $4",
                )
                .bind(name.to_owned())
                .bind(password_hash.to_owned())
                .bind(role.as_str())
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM admin_sessions WHERE user_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO admin_users (id, email, name, password_hash, role, disabled_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, NULL, $6)",
                )
                .bind(generated_id("adm"))
                .bind(email.clone())
                .bind(name.to_owned())
                .bind(password_hash.to_owned())
                .bind(role.as_str())
                .bind(now())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.admin_user_by_email(&email)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no dashboard user `{email}`")))
    }

    pub async fn admin_user_by_email(&self, email: &str) -> Result<Option<AdminUser>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM admin_users WHERE email = $1"
        ))
        .bind(email.trim().to_lowercase())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    pub async fn admin_users(&self) -> Result<Vec<AdminUser>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM admin_users ORDER BY email"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    pub async fn create_admin_session(
        &self,
        id_hash: &str,
        user_id: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let at = now();
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= $1")
            .bind(at)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO admin_sessions (id_hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash.to_owned())
        .bind(user_id.to_owned())
        .bind(csrf.to_owned())
        .bind(at)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session with this id digest, of a user that is not disabled.
    pub async fn admin_session(&self, id_hash: &str) -> Result<Option<AdminSession>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT s.csrf AS csrf, s.expires_at AS expires_at, {} FROM admin_sessions s \
             JOIN admin_users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > $2",
            USER_COLUMNS
                .split(", ")
                .map(|c| format!("u.{c} AS {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(id_hash.to_owned())
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user = user_from_row(&row)?;
        if user.disabled_at.is_some() {
            return Ok(None);
        }
        Ok(Some(AdminSession {
            user,
            csrf: row.try_get("csrf")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    pub async fn delete_admin_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE id_hash = $1")
            .bind(id_hash.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records an admin action.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        details: &serde_json::Value,
    ) -> Result<(), StoreError> {
        // Ids sort by time (nanoseconds first): the log reads in order within a second too.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, target, details_json) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(format!("aud_{nanos:020}_{:04x}", fastrand::u16(..)))
        .bind(now())
        .bind(actor.to_owned())
        .bind(action.to_owned())
        .bind(target.to_owned())
        .bind(to_json(details)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        sqlx::query(
            "SELECT id, at, actor, action, target, details_json FROM audit_log ORDER BY at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let details: String = row.try_get("details_json")?;
            Ok(AuditEntry {
                id: row.try_get("id")?,
                at: row.try_get("at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                details: serde_json::from_str(&details)
                    .map_err(|err| StoreError::Malformed(format!("details_json: {err}")))?,
            })
        })
        .collect()
    }
}
