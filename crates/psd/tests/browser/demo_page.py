#!/usr/bin/env python3
"""Opens psd's demo page in headless Chromium (Debian's chromium and
chromium-driver, PyPI's selenium) at a desktop and a phone width, clicks
++ twice, and takes a screenshot of each.

    demo_page.py BASE_URL OUT_DIR

Prints one JSON object: per width, the page's scroll width (to catch a
layout wider than the screen), the count shown, and the screenshot's path.
"""
import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

base, out = sys.argv[1], sys.argv[2]
sizes = {"desktop": (1280, 860), "phone": (390, 844)}
report = {}
for name, (width, height) in sizes.items():
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(arg)
    if name == "phone":
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2}})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(base + "/")
        for _ in range(2):
            driver.find_element(By.LINK_TEXT, "++").click()
        count = driver.find_element(By.CLASS_NAME, "count").text
        scroll = driver.execute_script("return document.documentElement.scrollWidth")
        inner = driver.execute_script("return window.innerWidth")
        path = f"{out}/demo-{name}.png"
        driver.save_screenshot(path)
        report[name] = {"count": count, "scroll_width": scroll, "inner_width": inner, "screenshot": path}
    finally:
        driver.quit()
print(json.dumps(report))
