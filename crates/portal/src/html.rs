//! Pages: one layout (inline style, no scripts, no external assets), escaping, and the
//! small pieces forms and tables are made of. Every dynamic value goes through [`esc`].

use std::borrow::Cow;
use std::fmt::Write;

use axum::response::{Html, IntoResponse, Response};
use http::StatusCode;

/// `text` safe in HTML text and double-quoted attributes.
pub fn esc(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

const STYLE: &str = r#"
:root{--fg:#1c2230;--muted:#586174;--line:#d8dde6;--bg:#f6f7f9;--card:#fff;--accent:#1f5fbf;--bad:#a8241a;--good:#17683a}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
a{color:var(--accent)}
a:focus,button:focus,input:focus,select:focus,textarea:focus{outline:3px solid #f0b400;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem;z-index:9}
header.top{background:#14213d;color:#fff}
header.top .bar{max-width:72rem;margin:0 auto;padding:.75rem 1rem;display:flex;flex-wrap:wrap;gap:1rem;align-items:center;justify-content:space-between}
header.top a{color:#fff;text-decoration:none;font-weight:600}
header.top nav{display:flex;flex-wrap:wrap;gap:1rem;align-items:center}
header.top form{margin:0}
header.top button{background:transparent;color:#fff;border:1px solid #fff8;padding:.25rem .75rem}
main{max-width:72rem;margin:0 auto;padding:1.5rem 1rem 3rem}
h1{font-size:1.75rem;margin:.25rem 0 1rem}h2{font-size:1.3rem;margin:2rem 0 .75rem}h3{font-size:1.1rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:.5rem;padding:1rem 1.25rem;margin:0 0 1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(17rem,1fr));gap:1rem}
.muted{color:var(--muted)}
.flash{border-left:4px solid var(--accent);background:#eaf1fc;padding:.75rem 1rem;margin:0 0 1rem}
.flash.error{border-color:var(--bad);background:#fbeceb}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
input,select,textarea{font:inherit;width:100%;max-width:28rem;padding:.5rem;border:1px solid #98a2b3;border-radius:.375rem;background:#fff}
button,.button{font:inherit;display:inline-block;margin-top:.75rem;padding:.5rem 1rem;border:0;border-radius:.375rem;background:var(--accent);color:#fff;cursor:pointer;text-decoration:none}
button.secondary{background:#e4e8ef;color:var(--fg)}button.danger{background:var(--bad)}
form.inline{display:inline}form.inline button{margin:0 .25rem 0 0;padding:.25rem .75rem}
table{border-collapse:collapse;width:100%;background:var(--card)}
th,td{text-align:left;padding:.5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:.875rem;color:var(--muted)}
.table{overflow-x:auto}
td code{overflow-wrap:anywhere}
textarea{display:block}
code,pre,.key{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9rem}
pre{background:#0f172a;color:#e2e8f0;padding:.75rem;border-radius:.375rem;overflow-x:auto}
.key{display:block;background:#fff8d6;border:1px dashed #b59400;padding:.75rem;word-break:break-all}
.method{display:inline-block;min-width:4.5rem;font-weight:700;font-family:ui-monospace,monospace}
.tag{display:inline-block;font-size:.8rem;padding:0 .5rem;border-radius:1rem;background:#e4e8ef}
.tag.approved,.tag.active{background:#d5f0df;color:var(--good)}.tag.pending{background:#fff1c7}.tag.rejected,.tag.cancelled,.tag.revoked,.tag.expired{background:#fbeceb;color:var(--bad)}
svg text{font:12px system-ui,sans-serif;fill:var(--muted)}
@media (max-width:40rem){h1{font-size:1.4rem}th,td{padding:.375rem}}
"#;

/// A whole page.
pub struct Page<'a> {
    pub site: &'a str,
    pub title: &'a str,
    /// The navigation: the portal's (from `signed_in`) unless given.
    pub nav: Option<String>,
    /// The signed-in developer's name and the session's CSRF token (for the sign-out form).
    pub signed_in: Option<(&'a str, &'a str)>,
    pub flash: Option<Flash>,
    pub body: String,
}

/// A message at the top of a page.
pub enum Flash {
    Info(String),
    Error(String),
}

impl Page<'_> {
    pub fn render(self) -> String {
        let home = if self.nav.is_some() {
            "/dashboard"
        } else {
            "/"
        };
        let mut nav = String::from(r#"<a href="/">APIs</a>"#);
        match self.signed_in {
            _ if self.nav.is_some() => nav = self.nav.unwrap_or_default(),
            Some((name, csrf)) => {
                let _ = write!(
                    nav,
                    r#"<a href="/apps">Applications</a><span class="muted" style="color:#cbd5e1">{}</span><form method="post" action="/logout"><input type="hidden" name="csrf" value="{}"><button type="submit">Sign out</button></form>"#,
                    esc(name),
                    esc(csrf)
                );
            }
            None => nav.push_str(r#"<a href="/login">Sign in</a><a href="/signup">Sign up</a>"#),
        }
        let flash = match self.flash {
            Some(Flash::Info(text)) => {
                format!(r#"<div class="flash" role="status">{}</div>"#, esc(&text))
            }
            Some(Flash::Error(text)) => {
                format!(
                    r#"<div class="flash error" role="alert">{}</div>"#,
                    esc(&text)
                )
            }
            None => String::new(),
        };
        format!(
            r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{title} · {site}</title><style>{STYLE}</style></head><body><a class="skip" href="#main">Skip to content</a><header class="top"><div class="bar"><a href="{home}">{site}</a><nav aria-label="Main">{nav}</nav></div></header><main id="main">{flash}{body}</main></body></html>"##,
            title = esc(self.title),
            site = esc(self.site),
            body = self.body,
        )
    }

    pub fn respond(self, status: StatusCode) -> Response {
        (
            status,
            [
                (http::header::CACHE_CONTROL, "no-store"),
                (
                    http::header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                ),
                (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (http::header::REFERRER_POLICY, "same-origin"),
            ],
            Html(self.render()),
        )
            .into_response()
    }
}

/// A labelled input.
pub fn field(name: &str, label: &str, kind: &str, value: &str, extra: &str) -> String {
    format!(
        r#"<label for="{name}">{label}</label><input id="{name}" name="{name}" type="{kind}" value="{value}" {extra}>"#,
        name = esc(name),
        label = esc(label),
        kind = esc(kind),
        value = esc(value),
    )
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// A one-button form posting to `action`.
pub fn button_form(
    action: &str,
    csrf: &str,
    label: &str,
    class: &str,
    hidden: &[(&str, &str)],
) -> String {
    let mut fields = csrf_field(csrf);
    for (name, value) in hidden {
        let _ = write!(
            fields,
            r#"<input type="hidden" name="{}" value="{}">"#,
            esc(name),
            esc(value)
        );
    }
    format!(
        r#"<form class="inline" method="post" action="{action}">{fields}<button type="submit" class="{class}">{label}</button></form>"#,
        action = esc(action),
        class = esc(class),
        label = esc(label),
    )
}

/// `12345` → `123.45` in the currency.
pub fn money(cents: u64, currency: &str) -> String {
    format!("{}.{:02} {}", cents / 100, cents % 100, esc(currency))
}

/// A Unix time as `YYYY-MM-DD HH:MM UTC`.
pub fn when(unix: i64) -> String {
    let day = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    format!(
        "{} {:02}:{:02} UTC",
        gatehouse_store::usage::date_of(day),
        seconds / 3600,
        seconds % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(esc("plain"), "plain");
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        let input = field("name", "Name", "text", "\"><img src=x>", "required");
        assert!(
            input.contains("value=\"&quot;&gt;&lt;img src=x&gt;\""),
            "{input}"
        );
        assert_eq!(money(4905, "USD"), "49.05 USD");
        assert_eq!(when(1_796_083_200 + 3_660), "2026-12-01 01:01 UTC");
    }
}
