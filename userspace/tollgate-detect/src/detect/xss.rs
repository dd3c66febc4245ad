//! Cross-site scripting: HTML tags that execute script, event-handler attributes,
//! script URLs and JavaScript sinks, on decoded and lowercased input.

use aho_corasick::AhoCorasick;

use super::rules;
use super::{ByteSet, Category, Location, STRONG, Sink, is_word};

/// Tags that run script or load active content by themselves.
const DANGEROUS_TAGS: &[&str] = &[
    "script",
    "iframe",
    "frame",
    "frameset",
    "object",
    "embed",
    "applet",
    "svg",
    "math",
    "meta",
    "base",
    "link",
    "style",
    "form",
    "isindex",
    "xss",
    "template",
    "img",
    "image",
    "video",
    "audio",
    "body",
    "input",
    "details",
    "marquee",
    "animate",
    "set",
    "handler",
    "listener",
    "xml",
    "import",
    "bgsound",
    "layer",
    "ilayer",
    "html",
    "portal",
    "textarea",
    "select",
    "button",
    "keygen",
    "source",
    "track",
    "a",
    "div",
    "span",
    "table",
    "td",
    "p",
    "h1",
    "b",
    "i",
    "u",
    "x",
    "plaintext",
    "noscript",
    "title",
    "blink",
    "dialog",
    "picture",
    "option",
    "comment",
];

/// Script-capable URL schemes and sinks; matched after removing blanks inside words.
const SINKS: &[&str] = &[
    "javascript:",
    "vbscript:",
    "livescript:",
    "data:text/html",
    "data:image/svg",
    "data:application/x",
    "document.cookie",
    "document.domain",
    "document.write",
    "document.location",
    "window.location",
    "string.fromcharcode",
    "expression(",
    "-moz-binding",
    "alert(",
    "prompt(",
    "confirm(",
    "eval(",
    "alert`",
    "prompt`",
    "confirm`",
    "settimeout(",
    "setinterval(",
    "location.href",
    "innerhtml",
    "srcdoc",
    "onerror=",
    "onload=",
    "constructor(",
    "top[",
    "self[",
    "window[",
    "import(",
    "fetch(",
    "atob(",
    "behavior:url",
];

pub(crate) struct Xss {
    sinks: AhoCorasick,
}

impl Xss {
    pub(crate) fn new() -> Xss {
        Xss {
            sinks: super::matcher(SINKS),
        }
    }

    /// `set` holds the bytes of `lower`.
    pub(crate) fn check(&self, lower: &str, set: &ByteSet, loc: &Location, sink: &mut Sink<'_>) {
        let s = lower.as_bytes();
        let has_lt = set.any(&ByteSet::from(b"<"));
        if has_lt {
            scan_tags(lower, loc, sink);
        }
        // Sinks and schemes: strip characters browsers ignore inside a scheme name.
        let compact: String;
        // Blanks only matter inside scheme names (`java\tscript:`), which need a `:`.
        let hay = if set.any(&ByteSet::from(b":")) && set.any(&ByteSet::from(b"\t\n\r ")) {
            compact = lower
                .chars()
                .filter(|c| !matches!(c, '\t' | '\n' | '\r' | ' '))
                .collect();
            compact.as_str()
        } else {
            lower
        };
        let mut score_sink = 0;
        let mut first = None;
        let mut distinct = 0u32;
        for m in self.sinks.find_iter(hay) {
            distinct += 1;
            let p = SINKS[m.pattern().as_usize()];
            // `alert(` in prose is unusual but possible; schemes and cookie theft are not.
            let sc = if p.ends_with(':') {
                script_url_score(&hay[m.end()..])
            } else if p.starts_with("document.") || p == "window.location" || p == "location.href" {
                // Names of sinks also appear in documentation paths and prose.
                5
            } else if p.starts_with("data:")
                || p == "string.fromcharcode"
                || p == "expression("
                || p == "-moz-binding"
                || p == "behavior:url"
            {
                STRONG
            } else if m.start() > 0 && !is_word(hay.as_bytes()[m.start() - 1]) || m.start() == 0 {
                5
            } else {
                2
            };
            if sc > score_sink {
                score_sink = sc;
                first = Some(m.start());
            }
        }
        // Several sinks together (`alert(document.cookie)`) are code, not prose.
        if distinct >= 2 && score_sink >= 5 {
            score_sink = STRONG;
        }
        if let Some(at) = first {
            // A sink after an attribute/string break-out is an injection.
            let breakout = lower.contains("\">")
                || lower.contains("'>")
                || lower.contains("\";")
                || lower.contains("';")
                || lower.starts_with('"')
                || lower.starts_with('\'');
            let sc = if breakout && score_sink >= 5 {
                STRONG
            } else if score_sink < STRONG && super::code::is_prose(lower) {
                // A sink named in a sentence (`don't call eval() here`) is
                // documentation or a code review, not a payload.
                2
            } else {
                score_sink
            };
            sink.push(rules::XSS_SCRIPT_SINK, Category::Xss, sc, loc, hay, at);
        }
        // Attribute break-out with an event handler, without a tag: `" onmouseover="x`.
        if let Some(at) = event_handler(s, false) {
            let prev_quote = s[..at]
                .iter()
                .rev()
                .take(3)
                .any(|&b| b == b'"' || b == b'\'' || b == b'/' || b == b'`');
            if prev_quote {
                sink.push(
                    rules::XSS_EVENT_HANDLER,
                    Category::Xss,
                    STRONG,
                    loc,
                    lower,
                    at,
                );
            }
        }
    }
}

/// Score of a `javascript:`-like scheme given the text after it: no-op links
/// (`javascript:;`, `javascript:void(0)`) and prose ("JavaScript: Basics") are weak.
fn script_url_score(rest: &str) -> u32 {
    let code_end = rest
        .find(['"', '\'', '>', '<', ' ', '&'])
        .unwrap_or(rest.len());
    let code = &rest[..code_end];
    let trimmed = code.trim_end_matches(';');
    if trimmed.is_empty() || trimmed == "void(0)" || trimmed == "void0" {
        return 0;
    }
    if code
        .bytes()
        .any(|b| matches!(b, b'(' | b'`' | b'=' | b'[' | b'/' | b'\\' | b'%' | b'.'))
    {
        STRONG
    } else {
        4
    }
}

/// Event handler names browsers fire (prefixes), for handlers outside a tag.
const EVENTS: &[&str] = &[
    "load",
    "error",
    "mouse",
    "click",
    "dblclick",
    "focus",
    "blur",
    "key",
    "change",
    "submit",
    "input",
    "toggle",
    "begin",
    "end",
    "animation",
    "transition",
    "pointer",
    "touch",
    "drag",
    "drop",
    "copy",
    "cut",
    "paste",
    "scroll",
    "wheel",
    "resize",
    "select",
    "show",
    "play",
    "pause",
    "message",
    "hashchange",
    "popstate",
    "page",
    "beforeunload",
    "unload",
    "abort",
    "auxclick",
    "contextmenu",
    "invalid",
    "search",
    "start",
    "finish",
    "bounce",
    "readystatechange",
    "progress",
    "canplay",
    "durationchange",
    "volumechange",
    "seek",
    "timeupdate",
    "waiting",
    "emptied",
    "stalled",
    "suspend",
    "ratechange",
    "repeat",
    "fullscreen",
    "afterprint",
    "beforeprint",
    "online",
    "offline",
    "storage",
    "formdata",
    "reset",
    "cuechange",
    "beforescriptexecute",
    "afterscriptexecute",
    "activate",
    "beforeactivate",
    "deactivate",
    "help",
    "move",
    "filterchange",
    "data",
    "row",
    "property",
    "stop",
    "lose",
    "cell",
    "control",
    "before",
    "after",
    "zoom",
    "wheel",
    "security",
    "loadstart",
    "beforeinput",
    "beforetoggle",
    "content",
    "gesture",
];

/// Finds `on<event>=` (attribute name boundary before it). With `in_tag` any
/// preceding separator counts; otherwise requires a quote/space/slash before.
fn event_handler(s: &[u8], in_tag: bool) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = finder!(b"on").find(&s[from..]) {
        let a = from + p;
        from = a + 2;
        if a > 0
            && (is_word(s[a - 1])
                || (!in_tag
                    && !matches!(
                        s[a - 1],
                        b' ' | b'"' | b'\'' | b'/' | b'\t' | b'\n' | b'`' | b';'
                    )))
        {
            continue;
        }
        let mut j = a + 2;
        while j < s.len() && s[j].is_ascii_alphabetic() {
            j += 1;
        }
        if j - a < 5 || (!in_tag && !EVENTS.iter().any(|e| s[a + 2..j].starts_with(e.as_bytes()))) {
            continue;
        }
        while j < s.len() && matches!(s[j], b' ' | b'\t' | b'\n' | b'\r' | b'/') {
            j += 1;
        }
        if s.get(j) == Some(&b'=') {
            return Some(a);
        }
    }
    None
}

/// Looks at every `<name ...>` and scores script-bearing ones.
fn scan_tags(lower: &str, loc: &Location, sink: &mut Sink<'_>) {
    let s = lower.as_bytes();
    let mut from = 0;
    let mut budget = 64;
    while let Some(p) = memchr::memchr(b'<', &s[from..]) {
        budget -= 1;
        if budget == 0 {
            break;
        }
        let a = from + p;
        from = a + 1;
        let mut j = a + 1;
        // Closing tags and `<!` constructs.
        if s.get(j) == Some(&b'/') {
            j += 1;
        }
        if s[j..].starts_with(b"!--") || s[j..].starts_with(b"![cdata[") {
            sink.push(rules::XSS_HTML_COMMENT, Category::Xss, 3, loc, lower, a);
            continue;
        }
        let name_start = j;
        while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'-' || s[j] == b':') {
            j += 1;
        }
        if j == name_start || !s[name_start].is_ascii_alphabetic() {
            continue;
        }
        let name = &lower[name_start..j];
        let name = name.rsplit(':').next().unwrap_or(name);
        // Tag end, bounded.
        let end = memchr::memchr(b'>', &s[j..]).map_or(s.len().min(j + 512), |e| j + e);
        let attrs = &s[j..end.max(j)];
        let closed = end < s.len() && s.get(end) == Some(&b'>');
        // The next byte after the name must separate it (else `<abc` prose, `<3`).
        let sep_ok =
            j >= s.len() || matches!(s[j], b' ' | b'/' | b'>' | b'\t' | b'\n' | b'\r' | 0x0c);
        if !sep_ok {
            continue;
        }
        if let Some(h) = event_handler(attrs, true) {
            sink.push(
                rules::XSS_EVENT_HANDLER,
                Category::Xss,
                STRONG,
                loc,
                lower,
                j + h,
            );
            continue;
        }
        let has_js_url = finder!(b"javascript:").find(attrs).is_some()
            || finder!(b"data:").find(attrs).is_some();
        let known = DANGEROUS_TAGS.contains(&name);
        match name {
            "script" | "iframe" | "object" | "embed" | "applet" | "frameset" | "svg" | "math"
            | "meta" | "base" | "xss" | "style" | "link" | "frame" | "isindex" | "template"
            | "portal" | "bgsound" | "xml" | "import" => {
                sink.push(rules::XSS_TAG, Category::Xss, STRONG, loc, lower, a);
            }
            _ if has_js_url => {
                sink.push(rules::XSS_SCRIPT_URL, Category::Xss, STRONG, loc, lower, a)
            }
            _ if known && memchr::memchr(b'=', attrs).is_some() => {
                // Rich text (`<a href="/apps/">`, `<span class="x">`) sets only
                // layout attributes; anything else may be a step towards script.
                let sc = if formatting_only(attrs) { 2 } else { 4 };
                sink.push(rules::XSS_HTML_TAG, Category::Xss, sc, loc, lower, a)
            }
            _ if known && (closed || !attrs.is_empty()) => {
                sink.push(rules::XSS_HTML_TAG, Category::Xss, 2, loc, lower, a)
            }
            _ if closed => sink.push(rules::XSS_HTML_TAG, Category::Xss, 2, loc, lower, a),
            _ => {}
        }
    }
}

/// Attributes of rich text that do nothing but layout and links.
const FORMATTING_ATTRS: &[&str] = &[
    "class",
    "id",
    "href",
    "title",
    "alt",
    "width",
    "height",
    "border",
    "cellpadding",
    "cellspacing",
    "align",
    "valign",
    "colspan",
    "rowspan",
    "target",
    "rel",
    "lang",
    "dir",
];

/// Whether every `name=` in a tag's attributes is a layout or link attribute.
fn formatting_only(attrs: &[u8]) -> bool {
    let mut names = 0;
    for (i, _) in attrs.iter().enumerate().filter(|(_, b)| **b == b'=') {
        let head = attrs[..i].trim_ascii_end();
        let start = head
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':')))
            .map_or(0, |p| p + 1);
        let name = &head[start..];
        // An `=` inside a quoted value (`href="/a?x=1"`) has no name before it
        // that ends a token; skip what is not a name.
        if name.is_empty()
            || attrs[..start]
                .iter()
                .filter(|b| **b == b'"' || **b == b'\'')
                .count()
                % 2
                == 1
        {
            continue;
        }
        names += 1;
        // XML namespace declarations (`<soap:Body xmlns:m="...">`) are markup too.
        if !FORMATTING_ATTRS.iter().any(|f| f.as_bytes() == name) && !name.starts_with(b"xmlns") {
            return false;
        }
    }
    names > 0
}

#[cfg(test)]
mod tests {
    use crate::detect::Action;
    use crate::detect::tests::{q, run};

    #[test]
    fn rich_text_is_not_an_alert() {
        for v in [
            "<span class=\"show-text\">regardez</span>",
            "nouvelle <br /><a href=\"/apps/\">galerie</a>!",
            "<table width=\"99%\" border=\"0\" cellpadding=\"1\">",
            "<a href=\"https://example.com/?a=1&b=2\" title=\"x\">link</a>",
            "<soap-env:body xmlns:m = \"http://www.xyz.org/quotations\"><m:getquote>",
        ] {
            let (v, a) = run(&format!(
                "GET /api/v1/search?q={} HTTP/1.1\r\nHost: a\r\n\r\n",
                v.replace('%', "%25")
                    .replace(' ', "%20")
                    .replace('"', "%22")
                    .replace('&', "%26")
                    .replace('?', "%3F")
            ));
            assert_eq!(a, Action::Allow, "{v:?}");
        }
        // Other attributes still count towards an alert.
        let (_, a) = run(
            "GET /api/v1/search?q=%3Ca%20probe=%22x%22%3Eb%3C/a%3E HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!(a, Action::Alert);
    }

    #[test]
    fn attacks() {
        for p in [
            "%3Cscript%3Ealert(1)%3C/script%3E",
            "%253Cscript%253E",
            "<img src=x onerror=alert(1)>",
            "<svg/onload=alert(1)>",
            "\"><img src=x onerror=prompt(1)>",
            "javascript:alert(document.cookie)",
            "java%0ascript:alert(1)",
            "%26lt;script%26gt;alert(1)%26lt;/script%26gt;",
            "\" onmouseover=\"alert(1)",
            "<a href=\"javascript&colon;alert(1)\">x</a>",
            "%u003Ciframe src=//evil>",
            "<body onload=alert('x')>",
            "<ScRiPt>prompt(1)</sCrIpT>",
            "\\u003cscript\\u003ealert(1)",
        ] {
            assert_eq!(q(p), Action::Ban, "{p}");
        }
    }

    #[test]
    fn benign_lookalikes() {
        for p in [
            "I+%3C3+you",
            "a%3Cb+and+c%3Ed",
            "price+%3C+100",
            "Please+confirm+your+order",
            "the+onload+event",
            "contact+us+on+monday",
            "x%3D1+and+y%3D2",
            "https://example.com/page?x=1",
        ] {
            assert_eq!(q(p), Action::Allow, "{p}");
        }
    }
}
