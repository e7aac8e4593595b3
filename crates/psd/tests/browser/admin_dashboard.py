#!/usr/bin/env python3
"""Drives psd's admin dashboard in headless Chromium (Debian's chromium and
chromium-driver, PyPI's selenium) as an operator would:

    admin_dashboard.py ADMIN_URL TOKEN_FILE OUT_DIR HANDLE_TO_END OTHER_HANDLE...

At a desktop width: opens the dashboard, signs in with the token, waits
until every handle given is listed, takes a screenshot, clicks "End" on
HANDLE_TO_END, accepts the confirmation, and waits until its row is gone
while the others stay. Then, signed in again at a phone width, takes a
screenshot. Prints one JSON object with what it saw.
"""
import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, token_file, out, to_end, *others = sys.argv[1:]
token = open(token_file).read().strip()


def browser(width, height, phone=False):
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(arg)
    if phone:
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2}})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def sign_in(driver):
    driver.get(base + "/")
    form_seen = "Admin token" in driver.page_source
    field = driver.find_element(By.NAME, "token")
    field.send_keys(token)
    field.submit()
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "live")))
    return form_seen


def rows(driver):
    return [r.get_attribute("data-handle") for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-handle]")]


report = {}
driver = browser(1280, 900)
try:
    report["login_form"] = sign_in(driver)
    WebDriverWait(driver, 10).until(lambda d: all(h in rows(d) for h in [to_end, *others]))
    report["listed_before"] = rows(driver)
    report["apps"] = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".card .prefix")]
    report["sparklines"] = len(driver.find_elements(By.CSS_SELECTOR, ".card svg"))
    # Let the live part refresh once, so the screenshot shows a polled page.
    time.sleep(2.5)
    driver.save_screenshot(f"{out}/admin-desktop.png")
    report["desktop_scroll_width"] = driver.execute_script("return document.documentElement.scrollWidth")
    row = driver.find_element(By.CSS_SELECTOR, f"tr[data-handle='{to_end}']")
    row.find_element(By.XPATH, ".//button[normalize-space()='End']").click()
    alert = WebDriverWait(driver, 5).until(EC.alert_is_present())
    report["confirm"] = alert.text
    alert.accept()
    WebDriverWait(driver, 15).until(lambda d: to_end not in rows(d))
    report["notice"] = driver.find_element(By.CSS_SELECTOR, ".notice").text
    report["listed_after"] = rows(driver)
finally:
    driver.quit()

driver = browser(390, 844, phone=True)
try:
    sign_in(driver)
    WebDriverWait(driver, 10).until(lambda d: all(h in rows(d) for h in others))
    driver.save_screenshot(f"{out}/admin-phone.png")
    report["phone_scroll_width"] = driver.execute_script("return document.documentElement.scrollWidth")
    report["phone_inner_width"] = driver.execute_script("return window.innerWidth")
finally:
    driver.quit()
print(json.dumps(report))
