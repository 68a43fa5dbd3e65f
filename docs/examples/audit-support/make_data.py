"""Hand-made customer-support preference data with planted problems.

Writes prefs.jsonl (main file), hh.jsonl (HH-RLHF layout) and truth.json (what was planted, by 0-based row).
"""
import json, random

rng = random.Random(7)

SLOTS = ["the iOS app", "the Android app", "the web dashboard"]

# (question template, good answer template, short bad answer, verbose-but-wrong answer)
ITEMS = [
    ("How do I reset my password in {s}?",
     "Open {s}, tap 'Forgot password' on the sign-in screen, and enter the email on your account. We send a reset link that is valid for 30 minutes; if it does not arrive, check your spam folder or request a new one.",
     "Just make a new account.",
     None),
    ("Why was I charged twice this month when using {s}?",
     "A double charge usually means a pending authorisation plus the real payment. The pending one drops off within 3 to 5 business days. If both are still there after that, send us the last four digits of the card and we will refund the extra charge.",
     "Charges are final, sorry.",
     None),
    ("How can I export my invoices from {s}?",
     "Go to Billing, then Invoices, select the months you need and choose Export. You can download them as PDF files or as one CSV file for your accountant.",
     "You can't.",
     None),
    ("{s} keeps logging me out every few minutes. What can I do?",
     "This is usually caused by a blocked session cookie or a clock that is out of sync. Make sure the device time is set automatically, allow cookies for our domain, and sign in again. If it continues, clear the app cache and reinstall.",
     "Stop using it then.",
     None),
    ("How do I cancel my subscription through {s}?",
     "Open Settings, then Plan and billing, and choose Cancel subscription. You keep access until the end of the paid period and you will not be charged again. You can reactivate at any time without losing your data.",
     "Call your bank and block us.",
     None),
    ("Can I change the email address on my account in {s}?",
     "Yes. Go to Profile, edit the email field and confirm the change from the link we send to the new address. Your old address keeps working for sign-in until you confirm.",
     "No, emails are permanent.",
     None),
    ("How do I add a teammate to my workspace from {s}?",
     "In Workspace settings choose Members and then Invite. Enter their email and pick a role: Viewer, Editor or Admin. They get an invitation that expires after seven days.",
     "Share your password with them.",
     None),
    ("My files are not syncing in {s}. How do I fix it?",
     "First check that you are online and signed in to the right workspace. Then open Sync status to see any file that failed; files above 2 GB or with unsupported characters in the name are skipped. Pausing and resuming sync forces a fresh scan.",
     "Sync is broken, wait for an update.",
     "Syncing problems are almost always caused by your internet provider throttling our servers, so the best thing to do is to contact them and ask for a faster plan, or switch providers entirely, since there is really nothing we can change on our side and nothing in the app affects syncing at all."),
    ("How do I turn on two-factor authentication in {s}?",
     "Go to Security, choose Two-factor authentication and scan the QR code with an authenticator app. Enter the six-digit code to confirm and store the backup codes somewhere safe.",
     "We don't support that.",
     None),
    ("Is my data encrypted when I use {s}?",
     "Yes. Data is encrypted in transit with TLS 1.2 or newer and at rest with AES-256. Workspace admins on the Business plan can also bring their own encryption keys.",
     "Probably.",
     None),
    ("How do I get a refund for an annual plan bought in {s}?",
     "Annual plans can be refunded in full within 30 days of purchase. Open a ticket from Help, choose Billing and include the invoice number; refunds reach your card in 5 to 10 business days.",
     "No refunds ever.",
     "Refunds for annual plans are handled by the app store that processed your payment in every single case, even for web purchases, so you will need to write to Apple or Google directly and explain the situation in detail, because we do not keep any billing records ourselves and cannot look anything up."),
    ("How do I delete my account from {s}?",
     "Go to Settings, then Account, and choose Delete account. We ask you to confirm with your password, and then all workspaces you own are removed after a 14-day grace period in which you can still change your mind.",
     "Uninstall the app.",
     None),
    ("Why is {s} so slow today?",
     "We had a degraded search service this morning, which is now resolved; you can see live status on our status page. If it is still slow for you, note the time and the action that was slow and send it to us with your workspace name.",
     "Get a better computer.",
     None),
    ("How do I restore a file I deleted in {s}?",
     "Deleted files stay in Trash for 30 days. Open Trash, select the file and choose Restore; it returns to its original folder. Admins can also restore files deleted by other members.",
     "Deleted means gone.",
     None),
    ("Can I use {s} offline?",
     "Yes, partly. Files you mark as Available offline can be opened and edited without a connection, and your changes upload when you reconnect. Search and sharing need a connection.",
     "No.",
     None),
    ("How do I change my plan from Basic to Pro in {s}?",
     "Open Plan and billing and choose Upgrade to Pro. You pay only the prorated difference for the rest of the current period, and the new limits apply immediately.",
     "Cancel and sign up again.",
     None),
    ("Where can I find my API key in {s}?",
     "API keys are under Developer settings. Create a key, give it a name and the scopes it needs, and copy it right away: we only show the full key once. You can revoke it from the same page.",
     "Ask a friend for theirs.",
     None),
    ("I get error 429 when calling the API from {s}. What does it mean?",
     "429 means you hit the rate limit, which is 100 requests per minute per key on the Pro plan. Read the Retry-After header and wait that many seconds, or batch requests. Business plans have higher limits.",
     "The server is down.",
     "Error 429 means that your API key has been permanently banned for suspicious behaviour, and there is no way to recover it; you have to create a completely new account with a different email address and a new credit card, then generate a new key and update every integration that used the old one."),
    ("How do I set up single sign-on for {s}?",
     "SSO is available on the Business plan. In Admin, choose Security and then SAML SSO, paste your identity provider's metadata URL and test with one account before enforcing it for everyone.",
     "Google it.",
     None),
    ("How do I change the language of {s}?",
     "Open Settings, then Preferences, and pick a language from the list. The change applies after a refresh; dates and number formats follow the region you choose there too.",
     "English only.",
     None),
    ("Why did my payment fail in {s}?",
     "Payments usually fail because the card expired, the billing address does not match, or the bank blocked an online charge. Update the card under Plan and billing and retry; your workspace stays active for 7 days while you fix it.",
     "Your card is bad.",
     None),
    ("How do I share a folder with someone outside my company using {s}?",
     "Right-click the folder, choose Share and enter their email. External guests can view or comment by default; an admin can allow editing. You can also create a link with an expiry date and a password.",
     "Email them the files one by one.",
     None),
    ("Can I get an invoice with my company's VAT number from {s}?",
     "Yes. Add the VAT number and legal company name under Billing details. All new invoices include them; to reissue past invoices with the VAT number, open a billing ticket and list the invoice numbers.",
     "Invoices can't be changed.",
     None),
    ("How do I connect {s} to Slack?",
     "Open Integrations, pick Slack and sign in to your Slack workspace. Choose the channel that should receive notifications and which events to send, such as new comments or finished exports.",
     "Slack is not compatible.",
     None),
    ("Notifications from {s} stopped arriving. Why?",
     "Check that notifications are allowed for our app in the device settings and that Do Not Disturb is off. In our Settings, open Notifications and confirm the events you want are switched on. Signing out and in again re-registers the device.",
     "Notifications are overrated.",
     None),
    ("How much storage do I get on the Pro plan in {s}?",
     "The Pro plan includes 2 TB per user, pooled across the workspace. You can see usage under Storage, and buy extra storage in 1 TB blocks if you need more.",
     "Enough.",
     None),
    ("How do I transfer ownership of a workspace in {s}?",
     "Only the current owner can do this. Go to Workspace settings, then Members, open the menu next to an Admin and choose Make owner. The previous owner becomes an Admin.",
     "Delete the workspace and make a new one.",
     None),
    ("Is there a student discount for {s}?",
     "Yes, verified students get 50 percent off the Pro plan. Sign up with your school email and apply under Plan and billing; the discount lasts for one year and can be renewed.",
     "Nope.",
     None),
    ("How do I report a bug I found in {s}?",
     "Open Help, choose Report a problem and describe the steps that trigger the bug. The report attaches your app version and logs automatically; screenshots help us reproduce it faster.",
     "Everyone has bugs.",
     None),
    ("Why can't I upload a 5 GB video in {s}?",
     "The upload limit is 2 GB per file on Basic and 10 GB on Pro. On Pro, make sure you use the desktop uploader or the web dashboard, since mobile uploads are capped at 4 GB by the operating system.",
     "Videos are not allowed.",
     "Video uploads fail because the file format is wrong, and the fix is always to convert it to an older format such as AVI using an online converter, then rename the extension to .txt before uploading, since text files have no size limit on any plan and the app converts them back automatically."),
    ("How do I update my billing address in {s}?",
     "Go to Plan and billing, choose Billing details and edit the address. The new address appears on the next invoice; earlier invoices keep the old address unless you ask for a reissue.",
     "Move house.",
     None),
    ("Can I undo changes to a document in {s}?",
     "Yes. Every document keeps a version history. Open the document, choose Version history and restore any earlier version; restoring creates a new version, so nothing is lost.",
     "Only if you remember what it said.",
     None),
    ("How do I pause my subscription in {s} instead of cancelling?",
     "You can pause for up to three months from Plan and billing. During a pause your data is kept read-only and you are not charged; it resumes automatically at the date you choose.",
     "Pausing is impossible.",
     None),
    ("How do I contact a human agent from {s}?",
     "Open Help and choose Chat with us; during business hours you reach an agent within a few minutes. Outside those hours, leave a message and we reply by email within one business day.",
     "Humans are busy.",
     None),
    ("Why do I see 'workspace limit reached' in {s}?",
     "Basic accounts can own up to three workspaces. Archive one you no longer use or upgrade to Pro, which removes the limit. Archived workspaces can be restored later.",
     "You did something wrong.",
     None),
    ("How do I print a report from {s}?",
     "Open the report, choose Export and then PDF; the PDF keeps the charts and page breaks and prints cleanly. Printing directly from the browser can cut wide tables.",
     "Take a screenshot.",
     None),
    ("How do I stop {s} from using mobile data?",
     "In Settings, open Sync and turn off Use mobile data. Uploads and downloads then wait for Wi-Fi; you can still allow single large files manually.",
     "Turn off your phone.",
     None),
    ("Can two people edit the same file at the same time in {s}?",
     "Yes, documents and sheets support real-time co-editing: you see each other's cursors and changes within a second. Binary files like videos lock while someone is uploading a new version.",
     "Only one at a time.",
     None),
    ("How do I download all my data from {s}?",
     "Use Settings, Account, Export my data. We prepare a ZIP archive of all your files and metadata and email you a download link, usually within an hour; the link stays valid for seven days.",
     "Copy it manually.",
     None),
    ("Why was my account suspended while using {s}?",
     "Accounts are suspended after repeated failed payments or a report of abuse. The email we sent explains which one applies; reply to it or open a ticket and we can usually restore access within a day.",
     "You know why.",
     None),
    ("How do I change the time zone in {s}?",
     "Go to Preferences and set Time zone, or turn on Use device time zone. Due dates and reminders shift to the new zone right away.",
     "Time zones don't matter.",
     None),
    ("What happens to my files if my Pro trial ends in {s}?",
     "Nothing is deleted. If you are over the Basic limits, the workspace becomes read-only until you upgrade or remove files to get under the limit.",
     "They are all deleted.",
     None),
    ("How do I give a client read-only access in {s}?",
     "Invite them as a guest and choose the Viewer role, or share a view-only link. Viewers can open and download files but cannot edit, delete or invite others.",
     "Give them your login.",
     None),
    ("Can I use {s} with a screen reader?",
     "Yes. The app supports VoiceOver, TalkBack and NVDA, and all main actions have keyboard shortcuts. Tell us if a screen is hard to use and we will prioritise fixing it.",
     "Accessibility is not supported.",
     None),
    ("How do I merge two accounts in {s}?",
     "Accounts cannot be merged automatically, but we can move workspaces from one to the other. Sign in to both, make the target account an owner of each workspace, and then delete the old account.",
     "Just use both forever.",
     None),
    ("Why does {s} say my email is already in use?",
     "That address already has an account, possibly from an old signup or an invitation. Use Forgot password to get into it, or sign in with Google if you used that before.",
     "Use a different email.",
     None),
    ("How do I set a custom domain for shared links in {s}?",
     "On the Business plan, open Admin, then Branding, and add your domain. Create the CNAME record we show in your DNS settings; verification usually finishes within an hour.",
     "Custom domains cost extra and nobody uses them.",
     None),
    ("How do I change the default folder for new uploads in {s}?",
     "Open Settings, then Uploads, and pick the default folder. Individual uploads can still go elsewhere by choosing a folder in the upload dialog.",
     "You can't change it.",
     None),
    ("Can I get a copy of your security certifications for {s}?",
     "Yes. Our SOC 2 Type II report and ISO 27001 certificate are available under NDA from the Trust page. Business customers can request them directly from their account manager.",
     "They're secret.",
     None),
    ("How do I recover a workspace I archived in {s}?",
     "Open the workspace switcher, choose Show archived and pick the workspace. Choose Restore; members and permissions come back as they were when it was archived.",
     "Archived workspaces are deleted.",
     None),
]
assert len(ITEMS) == 50, len(ITEMS)

ANNOTATORS = ["ann_a", "ann_b", "ann_c"]


def fill(t, s):
    return t.replace("{s}", s)


rows, truth = [], {"label_errors": [], "style_rows": [], "short_chosen": [],
                   "exact_dups": {}, "near_dups": {}, "swapped": {}}

base = []
for i, (q, good, bad, verbose_bad) in enumerate(ITEMS):
    for j, s in enumerate(SLOTS):
        base.append((i, j, fill(q, s), fill(good, s), fill(bad, s), verbose_bad and fill(verbose_bad, s)))

# 150 base rows; pick roles
idx = list(range(len(base)))
rng.shuffle(idx)
order = [base[k] for k in idx]

style_positions = set(range(0, 150, 4))          # 38 style rows
label_error_positions = [7, 19, 33, 46, 58, 71, 85, 97, 110, 123, 137, 149]
label_error_positions = [p if p not in style_positions else p + 1 for p in label_error_positions]

for pos, (i, j, q, good, bad, vbad) in enumerate(order):
    ann = ANNOTATORS[pos % 3]
    kind = "normal"
    if pos in style_positions:
        # same good content; one ends with a "Cheers!" sign-off. ann_c prefers it, the others do not.
        cheers = good + " Cheers!"
        plain = good
        if ann == "ann_c":
            chosen, rejected = cheers, plain
        else:
            chosen, rejected = plain, cheers
        kind = "style"
        truth["style_rows"].append(len(rows))
    elif pos in label_error_positions:
        chosen, rejected = bad, good              # clearly worse answer marked chosen
        kind = "label_error"
        truth["label_errors"].append(len(rows))
    elif vbad is not None:
        chosen, rejected = good, vbad             # concise correct beats verbose wrong
        truth["short_chosen"].append(len(rows))
    else:
        chosen, rejected = good, bad
    rows.append({"prompt": q, "chosen": chosen, "rejected": rejected, "annotator": ann, "ticket": f"T{1000+len(rows)}"})

n_base = len(rows)


def mangle(text):
    t = text.upper() if rng.random() < 0.5 else text.lower()
    t = t.replace(",", "").replace(".", " .").replace("?", " ??").replace(" ", "  ", 2)
    return t


# exact duplicates of 6 normal rows, near-duplicates of 6 others, swapped copies of 3 others
normal_rows = [k for k in range(n_base) if k not in truth["style_rows"] and k not in truth["label_errors"]]
picks = rng.sample(normal_rows, 15)
extra = []
for k in picks[:6]:
    extra.append(("exact", k, dict(rows[k])))
for k in picks[6:12]:
    r = dict(rows[k])
    r["prompt"], r["chosen"], r["rejected"] = mangle(r["prompt"]), mangle(r["chosen"]), mangle(r["rejected"])
    extra.append(("near", k, r))
for k in picks[12:15]:
    r = dict(rows[k])
    r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    extra.append(("swapped", k, r))
rng.shuffle(extra)
for kind, k, r in extra:
    r["ticket"] = f"T{1000+len(rows)}"
    r["annotator"] = ANNOTATORS[len(rows) % 3]
    key = {"exact": "exact_dups", "near": "near_dups", "swapped": "swapped"}[kind]
    truth[key][len(rows)] = k
    rows.append(r)

with open("prefs.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")

# length stats
def words(t):
    import re
    return len(re.findall(r"\w+", t))
cl = sum(words(r["chosen"]) > words(r["rejected"]) for r in rows)
truth["n_rows"] = len(rows)
truth["chosen_longer_share"] = cl / len(rows)
json.dump(truth, open("truth.json", "w"), indent=1)
print("rows", len(rows), "chosen longer", cl, cl / len(rows))
print({k: (len(v) if hasattr(v, '__len__') else v) for k, v in truth.items()})

# ---- second file: HH-RLHF layout, 40 pairs, some multi-turn
hh = []
for n, (i, j, q, good, bad, vbad) in enumerate(order[:40]):
    if n % 3 == 0:
        prefix = f"\n\nHuman: Hi, I have a question about my account.\n\nAssistant: Of course, what do you need help with?\n\nHuman: {q}\n\nAssistant:"
    else:
        prefix = f"\n\nHuman: {q}\n\nAssistant:"
    if n in (5, 17, 29):  # planted label errors
        c, rj = bad, good
    else:
        c, rj = good, bad
    hh.append({"chosen": prefix + " " + c, "rejected": prefix + " " + rj, "annotator": ANNOTATORS[n % 3]})
hh.append(dict(hh[3]))  # an exact duplicate at row 40
with open("hh.jsonl", "w") as f:
    for r in hh:
        f.write(json.dumps(r) + "\n")
print("hh rows", len(hh), "planted label errors 5,17,29; dup 40 of 3")
