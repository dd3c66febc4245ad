#!/usr/bin/env python3
"""Generates benign_api.jsonl: realistic benign API traffic for false-positive tests.

Deterministic (fixed seed); rerun to regenerate: python3 gen_benign.py > benign_api.jsonl
"""
import base64
import json
import random
import urllib.parse

random.seed(20261128)

NAMES = ["O'Brien", "D'Angelo", "Renée Müller", "Zoë Ångström", "Jean-Luc Picard", "Mary-Kate O'Neil",
         "José García", "Nguyễn Văn An", "Siobhán Ní Bhriain", "Li Wei", "Anne d'Arc", "McDonald"]
PROSE = [
    "Please select a union representative before Friday.",
    "Drop me a line if you have questions; I'm around all week.",
    "We tried the new café & loved it -- especially the crème brûlée!",
    "Order by Tuesday to get delivery on Thursday (where available).",
    "Is it true that 1 + 1 = 2? My kid asked me today.",
    "The script for the play is <i>almost</i> finished.",
    "Rock 'n' roll or blues? Both, obviously.",
    "Insert tab A into slot B, then update the firmware.",
    "Select all items from the list and delete the duplicates.",
    "I'd like to exec my plan: wake up, coffee, code.",
    "Tom & Jerry; cat videos; more cat videos.",
    "Meet me at 5 o'clock -- don't be late!",
    "Price < 100 and rating > 4 please",
    "He said \"where are you?\" and I said \"home\".",
    "Use the cmd key + C to copy, not ctrl.",
    "Let's grab lunch; whoever's free can join.",
    "Version 2.3.1 fixes the login bug (#1234).",
    "Email me at jane.doe+news@example.com for details.",
    "It's 50% off -- today only!",
    "Cats & dogs; birds | fish -- all welcome at the shelter.",
    "Don't `rm` anything yet; I'll check on Monday.",
    "Prices: $a for adults, $c for children.",
    "The ~/Downloads folder is full (again).",
    "Hi O'Brien & D'Angelo -- see you at 5; bring snacks | drinks.",
    "Can you ping me when the deploy is done?",
]
CODE = [
    "SELECT id, name FROM users WHERE active = true ORDER BY name;",
    "for i in range(10):\n    print(i)",
    "const x = arr.filter(v => v > 0).map(v => v * 2);",
    "if (a && b || c) { return 1; }",
    "fn main() { println!(\"hello\"); }",
    "git commit -m 'fix: handle empty input'",
    "docker run --rm -p 8080:80 nginx",
    "curl https://api.example.com/v1/items | jq .",
    "<div class=\"card\">Hello</div>",
    "$(document).ready(function() { init(); });",
    "echo $HOME && ls ~/projects",
    "function retry() { return fetch(url).catch(() => retry()); }",
    "render() { return this.props.a || this.props.b; }",
    "/* TODO: remove */ let total = price * qty;",
    "WHERE name LIKE 'O''Brien%'",
    "Run `npm install` then `npm test`.",
    "SELECT COUNT(*) FROM orders GROUP BY status;",
]
QA = [
    "How do I read a file line by line with java.io.BufferedReader in Java 17?",
    "Should I use ScriptEngineManager or GraalVM polyglot to run user scripts in my app?",
    "Why does ProcessBuilder ignore my PATH when I start the child process from a service?",
    "What is the difference between __proto__ and prototype in JavaScript objects?",
    "In Python, why does my class define __init__ but the __class__ attribute looks wrong?",
    "Jinja prints {{ user.name }} literally in my email template, what am I missing?",
    "My Handlebars template shows {{title}} instead of the title when the page loads.",
    "Should I use file_get_contents or cURL to call a REST API from PHP 8?",
    "Spring shows ${app.name} instead of the value; is the property file on the classpath?",
    "Our ERB view renders <%= @user.name %> as empty after the upgrade to Rails 7.",
    "Deserializing with ObjectInputStream fails with java.io.InvalidClassException, any idea?",
    "How do I parse XML with a DOCTYPE in Python without loading external entities?",
    "Why is $_POST empty when I send JSON from fetch to my PHP endpoint?",
    "Which is faster in PHP: array_map with a closure or a plain foreach loop?",
]
TEMPLATES = ["Hi {{name}}, your order {{order_id}} has shipped.", "Dear {{ first_name }}, welcome to {{company}}!",
             "Your code is ${code}; it expires in ${minutes} minutes.", "Hello #{name}, see you at #{time}.",
             "{{#each items}}<li>{{this}}</li>{{/each}}", "Total: {{ total | currency }}"]
URLS = ["https://www.wikipedia.org/wiki/SQL", "https://github.com/rust-lang/rust/issues/1",
        "https://example.com/path/to/page?ref=home&utm_source=news", "https://cdn.example.net/img/logo.png",
        "http://news.ycombinator.com/item?id=123456", "https://maps.google.com/?q=48.8584,2.2945",
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "https://docs.rs/serde/latest/serde/",
        "https://www.php.net/manual/en/function.file-get-contents.php", "https://shop.example.com/product.php?id=42",
        "https://docs.oracle.com/javase/8/docs/api/java/lang/Runtime.html", "https://intranet.example.org/default.aspx"]
SEARCHES = ["select a union", "drop me a line", "union station chicago", "or else", "and more", "best sql books",
            "how to drop a table in excel", "insert coin", "update windows 11", "1 or 2 bedroom apartment",
            "delete account", "O'Reilly books", "rock & roll", "c:/ drive full", "../ meaning in linux",
            "javascript tutorial", "alert icon png", "script writing tips", "sleep(8 hours) benefits",
            "null pointer exception", "where is waldo", "50% off", "100% cotton", "a+b=c", "1=1 meaning",
            "drop table reservation", "cats & dogs; birds | fish", "select * from menu", "time for lunch",
            "cat & mouse", "sleep 8 hours", "who am i", "I'd like a table for 2", "{id,name}",
            "python 3.12 release", "~5 minutes", "ping pong table", "kill -9 meaning", "$5 -10% coupon"]
UAS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
       "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
       "okhttp/4.12.0", "python-requests/2.31.0", "curl/8.5.0", "Go-http-client/1.1", "axios/1.6.8",
       "MyApp/3.2.1 (iPhone; iOS 17.4; Scale/3.00)", "PostmanRuntime/7.37.0"]
PATHS = ["/api/v1/users", "/api/v1/orders", "/api/v2/products", "/api/v1/search", "/api/v1/comments",
         "/api/v1/events", "/api/v1/notes", "/api/v1/profile", "/api/v1/files", "/api/v1/messages"]


def headers(extra=None):
    h = [("Host", "api.example.test"), ("User-Agent", random.choice(UAS)), ("Accept", "application/json"),
         ("Accept-Encoding", "gzip, deflate, br"), ("Accept-Language", "en-US,en;q=0.9")]
    if random.random() < 0.5:
        h.append(("Authorization", "Bearer " + base64.urlsafe_b64encode(random.randbytes(32)).decode().rstrip("=")))
    if random.random() < 0.4:
        h.append(("Cookie", "session=" + base64.b64encode(random.randbytes(24)).decode() + "; theme=dark; lang=en-US"))
    if random.random() < 0.3:
        h.append(("Referer", random.choice(URLS)))
    if random.random() < 0.3:
        h.append(("X-Request-Id", "%08x-%04x-4%03x-a%03x-%012x" % (random.getrandbits(32), random.getrandbits(16),
                                                                   random.getrandbits(12), random.getrandbits(12),
                                                                   random.getrandbits(48))))
    if random.random() < 0.2:
        h.append(("X-Forwarded-For", "203.0.113.%d, 10.0.0.%d" % (random.randint(1, 254), random.randint(1, 254))))
    return h + (extra or [])


def render(method, target, hdrs, body=b""):
    if body:
        hdrs = hdrs + [("Content-Length", str(len(body)))]
    head = "%s %s HTTP/1.1\r\n" % (method, target) + "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n"
    return head + body.decode()


def q(params):
    return urllib.parse.urlencode(params)


def sample():
    kind = random.randrange(11)
    path = random.choice(PATHS)
    if kind == 0:
        return render("GET", path + "?" + q({"q": random.choice(SEARCHES), "page": random.randint(1, 20),
                                            "sort": random.choice(["name", "-created_at", "price desc"])}), headers())
    if kind == 1:
        return render("GET", "%s/%d" % (path, random.randint(1, 10**6)) + "?" + q({"include": "author,comments"}), headers())
    if kind == 2:
        body = json.dumps({"name": random.choice(NAMES), "bio": random.choice(PROSE), "website": random.choice(URLS),
                           "tags": random.sample(["a&b", "c++", "node.js", "r&d", "50%", "o'reilly", "x<y"], 3)}).encode()
        return render("POST", path, headers([("Content-Type", "application/json")]), body)
    if kind == 3:
        body = json.dumps({"snippet": random.choice(CODE), "language": random.choice(["sql", "python", "js", "rust", "shell"]),
                           "comment": random.choice(PROSE)}).encode()
        return render("POST", "/api/v1/snippets", headers([("Content-Type", "application/json")]), body)
    if kind == 4:
        blob = base64.b64encode(random.randbytes(random.randint(30, 300))).decode()
        body = json.dumps({"filename": random.choice(["report.pdf", "photo 1.jpg", "notes (final).txt", "data-2024.csv"]),
                           "content": blob, "checksum": "%064x" % random.getrandbits(256)}).encode()
        return render("PUT", "/api/v1/files/%032x" % random.getrandbits(128), headers([("Content-Type", "application/json")]), body)
    if kind == 5:
        params = {"v": 2, "tid": "G-%08X" % random.getrandbits(32), "cid": "%d.%d" % (random.getrandbits(30), random.getrandbits(30)),
                  "dl": random.choice(URLS), "dr": random.choice(URLS), "dt": random.choice(PROSE)[:40], "sr": "1920x1080",
                  "en": random.choice(["page_view", "scroll", "click"]), "ep.label": random.choice(SEARCHES),
                  "_p": random.getrandbits(31), "ul": "en-us", "data": json.dumps({"a": 1, "b": [1, 2], "c": "x=y&z"})}
        return render("GET", "/api/v1/events?" + q(params), headers())
    if kind == 6:
        body = q({"name": random.choice(NAMES), "message": random.choice(PROSE), "email": "user%d@example.org" % random.randint(1, 999),
                  "redirect": random.choice(URLS)}).encode()
        return render("POST", "/api/v1/contact", headers([("Content-Type", "application/x-www-form-urlencoded")]), body)
    if kind == 8:
        body = json.dumps({"title": random.choice(QA), "body": random.choice(QA) + " " + random.choice(PROSE),
                           "tags": random.sample(["java", "php", "python", "javascript", "xml", "spring", "rails"], 2)}).encode()
        return render("POST", "/api/v1/questions", headers([("Content-Type", "application/json")]), body)
    if kind == 9:
        body = json.dumps({"name": random.choice(["order-shipped", "welcome", "otp", "reminder"]),
                           "template": random.choice(TEMPLATES), "locale": random.choice(["en", "fr", "de"])}).encode()
        return render("PUT", "/api/v1/templates/%d" % random.randint(1, 500), headers([("Content-Type", "application/json")]), body)
    if kind == 10:
        return render("GET", "/api/v1/links?" + q({"url": random.choice(URLS), "page": random.randint(1, 5),
                                                  "session_id": "cs_test_%024x" % random.getrandbits(96),
                                                  "q": random.choice(["java.io.File", "base64_decode", "__init__", "{{name}}"])}), headers())
    body = json.dumps({"text": random.choice(PROSE) + " " + random.choice(PROSE), "author": random.choice(NAMES),
                       "reply_to": random.randint(1, 10**5), "meta": {"client": "web", "version": "1.%d.%d" % (random.randint(0, 9), random.randint(0, 20))}}).encode()
    return render(random.choice(["POST", "PATCH"]), "/api/v1/comments/%d" % random.randint(1, 10**5), headers([("Content-Type", "application/json; charset=utf-8")]), body)


for i in range(400):
    print(json.dumps({"id": "benign-api-%03d" % i, "source": "tollgate", "label": "benign", "category": "benign", "raw": sample()}, ensure_ascii=False))
