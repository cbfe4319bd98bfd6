//! The two languages Ponte speaks to people (English and Brazilian Portuguese), and how one is
//! picked: from the environment for console lines, from `Accept-Language` or a choice for pages.

use std::fmt;

/// A language of the pages and of the agent's start-up lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Lang {
    /// English (the default).
    #[default]
    En,
    /// Brazilian Portuguese.
    PtBr,
}

impl Lang {
    /// Every language, in the order the pages offer them.
    pub const ALL: [Lang; 2] = [Lang::PtBr, Lang::En];

    /// The BCP 47 tag (`en`, `pt-BR`), as in `<html lang>` and `?lang=`.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::PtBr => "pt-BR",
        }
    }

    /// The language's own name, for the switch on the pages.
    pub fn own_name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::PtBr => "Português",
        }
    }

    /// A language tag or a POSIX locale (`pt_BR.UTF-8`, `pt-br`, `pt`, `en_US`): any Portuguese
    /// is pt-BR, any English is en, anything else is none of ours.
    pub fn parse(tag: &str) -> Option<Lang> {
        let primary = tag
            .trim()
            .split(['-', '_', '.', '@'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match primary.as_str() {
            "pt" => Some(Lang::PtBr),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The best of ours in an `Accept-Language` header, by q-value (ties: the first listed);
    /// English when it names neither.
    pub fn from_accept_language(header: &str) -> Lang {
        let mut best: Option<(f32, Lang)> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or_default();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if let Some(lang) = Lang::parse(tag)
                && q > 0.0
                && best.is_none_or(|(b, _)| q > b)
            {
                best = Some((q, lang));
            }
        }
        best.map(|(_, l)| l).unwrap_or_default()
    }

    /// The language of this process's user: `LC_ALL`, then `LC_MESSAGES`, then `LANG` (the
    /// POSIX order); on Windows, the user's display language when those are unset.
    pub fn from_env() -> Lang {
        Self::from_lookup(|name| std::env::var(name).ok()).unwrap_or_else(system_lang)
    }

    /// [`Lang::from_env`] over any variable lookup (tests use a table). `None` when no variable
    /// is set; an unknown language is English.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Lang> {
        ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .find_map(|name| lookup(name).filter(|v| !v.trim().is_empty()))
            .map(|v| Lang::parse(&v).unwrap_or_default())
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

#[cfg(windows)]
fn system_lang() -> Lang {
    sys_locale::get_locale()
        .and_then(|l| Lang::parse(&l))
        .unwrap_or_default()
}

#[cfg(not(windows))]
fn system_lang() -> Lang {
    Lang::En
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_locales() {
        for (text, want) in [
            ("pt-BR", Some(Lang::PtBr)),
            ("pt_BR.UTF-8", Some(Lang::PtBr)),
            ("pt", Some(Lang::PtBr)),
            ("PT-pt", Some(Lang::PtBr)),
            ("en_US.UTF-8", Some(Lang::En)),
            ("C.UTF-8", None),
            ("de-DE", None),
            ("", None),
        ] {
            assert_eq!(Lang::parse(text), want, "{text}");
        }
    }

    #[test]
    fn accept_language_by_quality() {
        for (header, want) in [
            ("pt-BR,pt;q=0.9,en-US;q=0.8,en;q=0.7", Lang::PtBr),
            ("en-US,en;q=0.9,pt-BR;q=0.8", Lang::En),
            ("de-DE, pt;q=0.5, en;q=0.4", Lang::PtBr),
            ("fr, de", Lang::En),
            ("pt;q=0, en", Lang::En),
            ("", Lang::En),
        ] {
            assert_eq!(Lang::from_accept_language(header), want, "{header}");
        }
    }

    #[test]
    fn environment_order_is_posix() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
        };
        assert_eq!(
            Lang::from_lookup(env(&[("LANG", "pt_BR.UTF-8")])),
            Some(Lang::PtBr)
        );
        assert_eq!(
            Lang::from_lookup(env(&[("LANG", "pt_BR.UTF-8"), ("LC_ALL", "en_US.UTF-8")])),
            Some(Lang::En)
        );
        assert_eq!(Lang::from_lookup(env(&[("LANG", "C")])), Some(Lang::En));
        assert_eq!(Lang::from_lookup(env(&[("LANG", "")])), None);
    }
}
