//! Field validation shared by every use case; each returns the normalised value or the
//! message to show for the field.

/// A lowercased, trimmed e-mail with one `@`, a dotted domain and no whitespace.
pub fn email(raw: &str) -> Result<String, String> {
    let e = raw.trim().to_lowercase();
    let valid = e.len() <= 254
        && !e.contains(char::is_whitespace)
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        });
    if valid {
        Ok(e)
    } else {
        Err("must be a valid e-mail address".to_owned())
    }
}

/// Passwords: 8 to 128 characters.
pub fn password(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if (8..=128).contains(&n) {
        Ok(())
    } else {
        Err("must be 8 to 128 characters".to_owned())
    }
}

/// Names: 1 to 200 characters after trimming.
pub fn name(n: &str) -> Result<(), String> {
    let len = n.trim().chars().count();
    if (1..=200).contains(&len) {
        Ok(())
    } else {
        Err("must be 1 to 200 characters".to_owned())
    }
}

/// Order notes: at most 500 characters.
pub fn note(n: &str) -> Result<(), String> {
    if n.chars().count() <= 500 {
        Ok(())
    } else {
        Err("must be at most 500 characters".to_owned())
    }
}

/// Quantities: 1 to 100.
pub fn quantity(q: i32) -> Result<(), String> {
    if (1..=100).contains(&q) {
        Ok(())
    } else {
        Err("must be between 1 and 100".to_owned())
    }
}

/// Prices: 0 to 10,000,000 cents.
pub fn price(p: i64) -> Result<(), String> {
    if (0..=10_000_000).contains(&p) {
        Ok(())
    } else {
        Err("must be between 0 and 10000000 cents".to_owned())
    }
}

/// Stock: 0 to 1,000,000 units.
pub fn stock(s: i32) -> Result<(), String> {
    if (0..=1_000_000).contains(&s) {
        Ok(())
    } else {
        Err("must be between 0 and 1000000".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(email("  Ana@ITSUR.edu "), Ok("ana@itsur.edu".to_owned()));
        for bad in [
            "", "ana", "@x.y", "a@b", "a b@c.d", "a@.c", "a@c.", "a@b@c.d",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
        assert!(password("1234567").is_err());
        assert!(password("12345678").is_ok());
        assert!(name("  ").is_err());
        assert!(quantity(0).is_err() && quantity(101).is_err() && quantity(1).is_ok());
        assert!(price(-1).is_err() && price(0).is_ok());
        assert!(stock(-1).is_err() && stock(1_000_001).is_err());
        assert!(note(&"x".repeat(501)).is_err());
    }
}
