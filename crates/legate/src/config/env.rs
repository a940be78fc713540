//! `${VAR}` and `${VAR:-default}` expansion over the raw config text.
//!
//! Expansion happens before YAML parsing so that any field can come from the environment, and it
//! never adds a newline, so line numbers in later errors still match the file the user wrote.
//! `$${` stands for a literal `${`. Comment lines are left alone.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("{line}:{col}: environment variable `{name}` is not set (write ${{{name}:-default}} to give a default)")]
    Unset {
        line: usize,
        col: usize,
        name: String,
    },
    #[error("{line}:{col}: unterminated `${{`: close it with `}}`")]
    Unterminated { line: usize, col: usize },
    #[error("{line}:{col}: invalid environment variable name `{name}`")]
    BadName {
        line: usize,
        col: usize,
        name: String,
    },
    #[error("{line}:{col}: environment variable `{name}` contains a newline, which cannot be expanded into YAML")]
    Newline {
        line: usize,
        col: usize,
        name: String,
    },
}

pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let line_no = idx + 1;
        if line.trim_start().starts_with('#') || !line.contains('$') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let col = line.len() - rest.len() + pos + 1;
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix("${") {
                out.push_str("${");
                rest = tail;
                continue;
            }
            let Some(body_and_tail) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let Some(end) = body_and_tail.find('}') else {
                return Err(EnvError::Unterminated { line: line_no, col });
            };
            let body = &body_and_tail[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(EnvError::BadName {
                    line: line_no,
                    col,
                    name: name.to_string(),
                });
            }
            let value = match (lookup(name), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(EnvError::Unset {
                        line: line_no,
                        col,
                        name: name.to_string(),
                    })
                }
            };
            if value.contains('\n') {
                return Err(EnvError::Newline {
                    line: line_no,
                    col,
                    name: name.to_string(),
                });
            }
            out.push_str(&value);
            rest = &body_and_tail[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_escape() {
        let src =
            "a: ${HOST}:5432\nb: ${PORT:-8080}\nc: $${HOST}\nd: $5\n# ${NOPE}\ne: '${EMPTY}'\n";
        let got = expand(src, env).unwrap();
        assert_eq!(
            got,
            "a: db.internal:5432\nb: 8080\nc: ${HOST}\nd: $5\n# ${NOPE}\ne: ''\n"
        );
    }

    #[test]
    fn reports_unset_with_position() {
        let err = expand("x: 1\ny: ${MISSING}\n", env).unwrap_err();
        assert_eq!(
            err,
            EnvError::Unset {
                line: 2,
                col: 4,
                name: "MISSING".into()
            }
        );
    }

    #[test]
    fn reports_unterminated_and_bad_names() {
        assert!(matches!(
            expand("a: ${HOST", env),
            Err(EnvError::Unterminated { line: 1, .. })
        ));
        assert!(matches!(
            expand("a: ${1X}", env),
            Err(EnvError::BadName { .. })
        ));
    }
}
