//! Links in proxied HTML, kept under the proxy path as upstream's proxy transport keeps them:
//! a page served at `/` by a pod links to `/style.css`, which the browser must fetch through
//! `/api/v1/namespaces/NS/pods/NAME/proxy/style.css`. Absolute paths (and URLs naming the host
//! the page came from) in the attributes upstream rewrites get the proxy prefix; everything
//! else, byte for byte, stays as the pod wrote it.

/// The attributes upstream rewrites, by element (`atomsToAttrs` in apimachinery's proxy).
fn rewritten(element: &str, attribute: &str) -> bool {
    matches!(
        (element, attribute),
        ("a" | "area" | "base" | "link", "href")
            | ("applet", "codebase")
            | ("audio" | "embed" | "script" | "source", "src")
            | ("blockquote" | "del" | "ins" | "q", "cite")
            | ("body", "background")
            | ("button", "formaction")
            | ("command", "icon")
            | ("form", "action")
            | ("frame" | "iframe", "longdesc" | "src")
            | ("head", "profile")
            | ("html", "manifest")
            | ("img", "longdesc" | "src" | "usemap")
            | ("input", "src" | "usemap" | "formaction")
            | ("object", "classid" | "codebase" | "data" | "usemap")
            | ("video", "poster" | "src")
    )
}

/// Upstream's `rewriteURL`: an absolute path, or a URL on `host` (the pod's address or the
/// Host the client asked), moves under `prefix`, unless it is there already. Relative
/// references and other hosts' URLs stay.
pub fn rewrite_url(url: &str, prefix: &str, hosts: &[&str]) -> String {
    let (path_and_rest, same_host) = match url.split_once("://") {
        Some((_, after)) => {
            let (host, path) = after.split_at(after.find('/').unwrap_or(after.len()));
            if !hosts.contains(&host) {
                return url.to_owned();
            }
            (path, true)
        }
        None if url.starts_with("//") => return url.to_owned(),
        None => (url, false),
    };
    if !path_and_rest.starts_with('/') || (!same_host && path_and_rest.starts_with(prefix)) {
        return url.to_owned();
    }
    if path_and_rest.starts_with(prefix) {
        return path_and_rest.to_owned();
    }
    format!("{}{path_and_rest}", prefix.trim_end_matches('/'))
}

/// `html` with the links of its tags moved under `prefix`.
pub fn rewrite_html(html: &str, prefix: &str, hosts: &[&str]) -> String {
    let mut out = String::with_capacity(html.len() + 64);
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            let end = comment.find("-->").map_or(rest.len(), |e| e + 7);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let name_len = rest[1..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len() - 1);
        if name_len == 0 {
            out.push('<');
            rest = &rest[1..];
            continue;
        }
        let element = rest[1..=name_len].to_ascii_lowercase();
        let (tag, after) = split_tag(rest);
        out.push_str(&rewrite_tag(tag, &element, 1 + name_len, prefix, hosts));
        rest = after;
        // Script and style bodies are text, not markup.
        if element == "script" || element == "style" {
            let close = format!("</{element}");
            let end = rest.to_ascii_lowercase().find(&close).unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// The tag at the start of `s` (up to its `>`, quotes respected) and what follows.
fn split_tag(s: &str) -> (&str, &str) {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return s.split_at(i + 1),
            _ => {}
        }
    }
    (s, "")
}

/// One start tag with its rewritten attributes' values replaced in place.
fn rewrite_tag(tag: &str, element: &str, mut pos: usize, prefix: &str, hosts: &[&str]) -> String {
    let bytes = tag.as_bytes();
    let mut out = String::with_capacity(tag.len());
    let mut copied = 0;
    while pos < bytes.len() {
        while pos < bytes.len() && (bytes[pos].is_ascii_whitespace() || bytes[pos] == b'/') {
            pos += 1;
        }
        let name_start = pos;
        while pos < bytes.len() && !b" \t\r\n=>/".contains(&bytes[pos]) {
            pos += 1;
        }
        if pos == name_start {
            break;
        }
        let name = tag[name_start..pos].to_ascii_lowercase();
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if bytes.get(pos) != Some(&b'=') {
            continue;
        }
        pos += 1;
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let (value_start, value_end, next) = match bytes.get(pos) {
            Some(q @ (b'"' | b'\'')) => {
                let end = tag[pos + 1..].find(*q as char).map_or(tag.len(), |e| pos + 1 + e);
                (pos + 1, end, (end + 1).min(tag.len()))
            }
            _ => {
                let end = tag[pos..]
                    .find(|c: char| c.is_ascii_whitespace() || c == '>')
                    .map_or(tag.len(), |e| pos + e);
                (pos, end, end)
            }
        };
        if rewritten(element, &name) {
            let value = &tag[value_start..value_end];
            out.push_str(&tag[copied..value_start]);
            out.push_str(&rewrite_url(value, prefix, hosts));
            copied = value_end;
        }
        pos = next;
    }
    out.push_str(&tag[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/api/v1/namespaces/ns/pods/http:web:1080/proxy";

    #[test]
    fn absolute_paths_move_under_the_proxy() {
        // The conformance suite's porter page, served at / of port 1080.
        assert_eq!(
            rewrite_html(r#"<a href="/rewriteme">test</a>"#, PREFIX, &["10.0.0.5:1080"]),
            format!(r#"<a href="{PREFIX}/rewriteme">test</a>"#)
        );
        let page = r#"<html><head><link rel=stylesheet href=/s.css><script src='/app.js'>if (a<b) x("<a href='/no'>")</script></head>
<!-- <a href="/comment"> --><body background="/bg.png"><img alt="x" src="//cdn/x.png"><a href="rel">r</a>
<a href="http://10.0.0.5:1080/same">s</a><a href="http://example.com/other">o</a><form action="/post"></form></body></html>"#;
        let got = rewrite_html(page, PREFIX, &["10.0.0.5:1080"]);
        for want in [
            format!("href={PREFIX}/s.css>"),
            format!("src='{PREFIX}/app.js'"),
            "x(\"<a href='/no'>\")".to_owned(),
            r#"<a href="/comment">"#.to_owned(),
            format!(r#"background="{PREFIX}/bg.png""#),
            r#"src="//cdn/x.png""#.to_owned(),
            r#"<a href="rel">"#.to_owned(),
            format!(r#"<a href="{PREFIX}/same">"#),
            r#"<a href="http://example.com/other">"#.to_owned(),
            format!(r#"action="{PREFIX}/post""#),
        ] {
            assert!(got.contains(&want), "{want} not in {got}");
        }
    }

    #[test]
    fn links_already_under_the_proxy_stay() {
        let already = format!("{PREFIX}/x");
        assert_eq!(rewrite_url(&already, PREFIX, &[]), already);
        assert_eq!(rewrite_url("/", PREFIX, &[]), format!("{PREFIX}/"));
    }
}
