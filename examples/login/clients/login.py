#!/usr/bin/env python3
"""Logs in to the login example with requests.Session (it keeps the cookie),
counts three visits, logs out, and shows that the session is gone.

    login.py BASE_URL USER PASSWORD      (BASE_URL: http://127.0.0.1:8080/app)
"""
import re
import sys

import requests

base, user, password = sys.argv[1:4]
with requests.Session() as s:
    r = s.post(f"{base}/login", data={"user": user, "password": password}, allow_redirects=False, timeout=30)
    if r.status_code != 303:
        sys.exit(f"login failed: {r.status_code}")
    print(f"logged in as {user}")
    for _ in range(3):
        print(re.search(r"count=\d+", s.get(f"{base}/", timeout=30).text).group(0))
    print(s.post(f"{base}/logout", timeout=30).text, end="")
    if "login form" in s.get(f"{base}/", timeout=30).text:
        print("the session is gone")
