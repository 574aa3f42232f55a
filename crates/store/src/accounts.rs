//! Developer accounts of the portal: the account (email, argon2 password hash,
//! verification), its sessions and one-time tokens (kept as digests only), and what a
//! developer owns: applications (consumers) with their keys and subscriptions. Hashing and
//! token generation happen in the portal; the store keeps what it is given.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::catalog::{all_subscriptions, generated_id, Subscription};
use crate::{
    consumer_from_row, key_from_row, now, Store, StoreError, StoredConsumer, StoredKey,
    CONSUMER_COLUMNS,
};

/// A developer account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Developer {
    pub id: String,
    /// Lower-cased.
    pub email: String,
    pub name: String,
    /// Argon2id PHC string; never sent out.
    #[serde(skip_serializing, default)]
    #[schemars(skip)]
    pub password_hash: String,
    pub email_verified_at: Option<i64>,
    pub disabled_at: Option<i64>,
    pub created_at: i64,
}

/// What a one-time token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    VerifyEmail,
    ResetPassword,
}

impl TokenPurpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }
}

/// A signed-in developer.
#[derive(Debug, Clone)]
pub struct Session {
    pub developer: Developer,
    pub csrf: String,
    pub expires_at: i64,
}

const DEVELOPER_COLUMNS: &str =
    "id, email, name, password_hash, email_verified_at, disabled_at, created_at";

fn developer_from_row(row: &AnyRow) -> Result<Developer, StoreError> {
    Ok(Developer {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        email_verified_at: row.try_get("email_verified_at")?,
        disabled_at: row.try_get("disabled_at")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Creates an account; `Conflict` when the email is taken (the portal must not tell
    /// the visitor so).
    pub async fn create_developer(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
    ) -> Result<Developer, StoreError> {
        let email = email.trim().to_lowercase();
        let mut tx = self.pool.begin().await?;
        let taken = sqlx::query("SELECT id FROM developers WHERE email = $1")
            .bind(email.clone())
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict("the email has an account".to_owned()));
        }
        let developer = Developer {
            id: generated_id("dev"),
            email,
            name: name.trim().to_owned(),
            password_hash: password_hash.to_owned(),
            email_verified_at: None,
            disabled_at: None,
            created_at: now(),
        };
        sqlx::query(
            "INSERT INTO developers (id, email, name, password_hash, email_verified_at, disabled_at, created_at) \
             VALUES ($1, $2, $3, $4, NULL, NULL, $5)",
        )
        .bind(developer.id.clone())
        .bind(developer.email.clone())
        .bind(developer.name.clone())
        .bind(developer.password_hash.clone())
        .bind(developer.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(developer)
    }

    pub async fn developer_by_email(&self, email: &str) -> Result<Option<Developer>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DEVELOPER_COLUMNS} FROM developers WHERE email = $1"
        ))
        .bind(email.trim().to_lowercase())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(developer_from_row)
        .transpose()
    }

    pub async fn developer(&self, id: &str) -> Result<Developer, StoreError> {
        sqlx::query(&format!(
            "SELECT {DEVELOPER_COLUMNS} FROM developers WHERE id = $1"
        ))
        .bind(id.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(developer_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("no developer `{id}`")))
    }

    pub async fn developers(&self) -> Result<Vec<Developer>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DEVELOPER_COLUMNS} FROM developers ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(developer_from_row)
        .collect()
    }

    pub async fn mark_email_verified(&self, developer_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE developers SET email_verified_at = $1 WHERE id = $2 AND email_verified_at IS NULL",
        )
        .bind(now())
        .bind(developer_id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets a new password and ends every session of the account.
    pub async fn set_developer_password(
        &self,
        developer_id: &str,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE developers SET password_hash = $1 WHERE id = $2")
            .bind(password_hash.to_owned())
            .bind(developer_id.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM developer_sessions WHERE developer_id = $1")
            .bind(developer_id.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Disables (or enables again) an account; disabling ends its sessions.
    pub async fn set_developer_disabled(
        &self,
        developer_id: &str,
        disabled: bool,
    ) -> Result<Developer, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE developers SET disabled_at = $1 WHERE id = $2")
            .bind(disabled.then(now))
            .bind(developer_id.to_owned())
            .execute(&mut *tx)
            .await?;
        if disabled {
            sqlx::query("DELETE FROM developer_sessions WHERE developer_id = $1")
                .bind(developer_id.to_owned())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.developer(developer_id).await
    }

    pub async fn create_developer_token(
        &self,
        developer_id: &str,
        purpose: TokenPurpose,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO developer_tokens (token_hash, developer_id, purpose, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(token_hash.to_owned())
        .bind(developer_id.to_owned())
        .bind(purpose.as_str())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Uses a token once: the developer it was made for, or `None` when it is unknown,
    /// used, expired or for something else.
    pub async fn consume_developer_token(
        &self,
        token_hash: &str,
        purpose: TokenPurpose,
    ) -> Result<Option<String>, StoreError> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT developer_id FROM developer_tokens \
             WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(token_hash.to_owned())
        .bind(purpose.as_str())
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let used = sqlx::query(
            "UPDATE developer_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
        )
        .bind(at)
        .bind(token_hash.to_owned())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if used.rows_affected() != 1 {
            return Ok(None);
        }
        Ok(Some(row.try_get("developer_id")?))
    }

    pub async fn create_developer_session(
        &self,
        id_hash: &str,
        developer_id: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let at = now();
        // Expired sessions go when new ones come.
        sqlx::query("DELETE FROM developer_sessions WHERE expires_at <= $1")
            .bind(at)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO developer_sessions (id_hash, developer_id, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash.to_owned())
        .bind(developer_id.to_owned())
        .bind(csrf.to_owned())
        .bind(at)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session with this id digest, of an account that is not disabled.
    pub async fn developer_session(&self, id_hash: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(
            "SELECT developer_id, csrf, expires_at FROM developer_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash.to_owned())
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let developer_id: String = row.try_get("developer_id")?;
        let developer = self.developer(&developer_id).await?;
        if developer.disabled_at.is_some() {
            return Ok(None);
        }
        Ok(Some(Session {
            developer,
            csrf: row.try_get("csrf")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    pub async fn delete_developer_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM developer_sessions WHERE id_hash = $1")
            .bind(id_hash.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A developer's applications (consumers they own), oldest first.
    pub async fn applications_of(
        &self,
        developer_id: &str,
    ) -> Result<Vec<StoredConsumer>, StoreError> {
        sqlx::query(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE developer_id = $1 ORDER BY created_at, id"
        ))
        .bind(developer_id.to_owned())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(consumer_from_row)
        .collect()
    }

    pub async fn consumer(&self, id: &str) -> Result<StoredConsumer, StoreError> {
        sqlx::query(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE id = $1"
        ))
        .bind(id.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(consumer_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("no consumer `{id}`")))
    }

    /// A consumer's keys, newest first.
    pub async fn keys_of(&self, consumer_id: &str) -> Result<Vec<StoredKey>, StoreError> {
        sqlx::query(
            "SELECT public_id, consumer_id, hash, created_at, expires_at, revoked_at, environment \
             FROM api_keys WHERE consumer_id = $1 ORDER BY created_at DESC, public_id",
        )
        .bind(consumer_id.to_owned())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
    }

    /// A consumer's subscriptions.
    pub async fn subscriptions_of(
        &self,
        consumer_id: &str,
    ) -> Result<Vec<Subscription>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let all = all_subscriptions(&mut tx).await?;
        tx.commit().await?;
        Ok(all
            .into_iter()
            .filter(|s| s.consumer_id == consumer_id)
            .collect())
    }
}
