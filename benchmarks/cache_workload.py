"""The labelled question set of the cache benchmarks: a small company handbook and, per topic,
one question asked four ways (the canonical wording and three rewordings written by hand).

Topics come in families that share their vocabulary (vacation / sick / parental / bereavement
leave, several reimbursement rates, several rotation periods...), so a semantic cache that
matches too loosely answers the wrong question: those near misses are what the precision of a
threshold is measured on. Two questions "ask the same thing" exactly when they share a topic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Topic:
    key: str
    fact: str
    questions: tuple[str, str, str, str]


TOPICS: tuple[Topic, ...] = (
    # -- leave ------------------------------------------------------------------------------
    Topic("vacation", "Employees receive 25 days of paid vacation per calendar year.", (
        "How many vacation days do employees get?",
        "How much paid vacation do I get each year?",
        "What is the annual vacation allowance for staff?",
        "How many days of paid holiday are employees entitled to per year?")),
    Topic("sick", "Employees may take up to 12 paid sick days per year without a doctor's note.", (
        "How many sick days do employees get?",
        "How many paid sick days am I allowed per year?",
        "What is the yearly allowance of sick leave days?",
        "How many days can I be off sick with pay each year?")),
    Topic("parental", "New parents receive 16 weeks of fully paid parental leave.", (
        "How long is parental leave?",
        "How many weeks of paid leave do new parents get?",
        "What is the duration of paid parental leave?",
        "How much time off is given after the birth or adoption of a child?")),
    Topic("bereavement", "Staff get 5 days of paid bereavement leave after the death of a close "
          "relative.", (
        "How many days of bereavement leave are there?",
        "How much time off do I get when a close relative dies?",
        "What is the paid leave for a death in the family?",
        "How long is compassionate leave after losing a family member?")),
    Topic("carryover", "Up to 5 unused vacation days can be carried over into the next year.", (
        "Can unused vacation days be carried over?",
        "How many vacation days roll over to next year?",
        "What happens to holiday days I do not use by December?",
        "Is there a limit on carrying vacation into the following year?")),
    # -- money --------------------------------------------------------------------------------
    Topic("expenses", "Expense reports must be submitted within 14 days of purchase.", (
        "What is the deadline for expense reports?",
        "How long do I have to submit an expense report?",
        "Within how many days must expenses be filed?",
        "When is the cutoff for submitting my expense claims?")),
    Topic("per_diem", "The travel per diem for meals is 60 euros per day.", (
        "What is the travel per diem?",
        "How much is the daily meal allowance when travelling?",
        "What daily amount do I get for food on business trips?",
        "How many euros per day are covered for meals while on travel?")),
    Topic("mileage", "Using a private car for business is reimbursed at 0.30 euros per km.", (
        "What is the mileage reimbursement rate?",
        "How much do I get per kilometre for driving my own car for work?",
        "What rate is paid for business use of a private car?",
        "How are kilometres driven in my personal vehicle reimbursed?")),
    Topic("training_budget", "Each employee has a training budget of 1,500 euros per year.", (
        "How big is the training budget?",
        "How much money can I spend on courses each year?",
        "What is the annual learning and development budget per person?",
        "How many euros are available for my professional training per year?")),
    Topic("approval", "Purchases above 5,000 euros need approval from the finance director.", (
        "Which purchases need finance approval?",
        "Above what amount does a purchase need the finance director's sign-off?",
        "What is the spending limit before approval is required?",
        "When do I need the finance director to approve a purchase?")),
    Topic("card_limit", "Corporate credit cards have a monthly limit of 3,000 euros.", (
        "What is the corporate card limit?",
        "How much can I spend on the company credit card per month?",
        "What is the monthly spending cap of a corporate card?",
        "What is the maximum monthly amount on my company card?")),
    Topic("payday", "Salaries are paid on the 25th of every month.", (
        "When is payday?",
        "On which day of the month are salaries paid?",
        "What date do we get our monthly pay?",
        "When does my salary arrive each month?")),
    Topic("invoice_terms", "Supplier invoices are paid within 30 days of receipt.", (
        "What are the payment terms for supplier invoices?",
        "How quickly do we pay our suppliers' invoices?",
        "Within how many days are vendor bills paid?",
        "How long after receiving an invoice does the company pay it?")),
    # -- IT and security ----------------------------------------------------------------------
    Topic("password", "Passwords must be changed every 90 days.", (
        "How often must passwords be changed?",
        "How frequently do I need to update my password?",
        "What is the password expiry period?",
        "After how many days does my login password have to be reset?")),
    Topic("api_keys", "API keys are rotated by regenerating them in the admin console every "
          "quarter.", (
        "How do I rotate the API keys?",
        "What is the procedure for rotating an API key?",
        "How are API keys regenerated?",
        "Where do I go to replace our API keys with new ones?")),
    Topic("mfa", "Multi-factor authentication with an authenticator app is required for every "
          "account.", (
        "Is multi-factor authentication required?",
        "Do I have to use two-factor authentication?",
        "Which accounts need MFA?",
        "Is a second login factor mandatory for staff accounts?")),
    Topic("vpn", "Remote access goes through the WireGuard VPN, configured by the IT portal.", (
        "How do I connect to the VPN?",
        "How do I set up remote access to the company network?",
        "Which VPN do we use and how is it configured?",
        "How can I reach internal systems when working from home?")),
    Topic("laptop", "Laptops are replaced every 4 years.", (
        "How often are laptops replaced?",
        "When do I get a new laptop?",
        "What is the replacement cycle for work computers?",
        "After how many years is a company laptop renewed?")),
    Topic("lost_laptop", "A lost or stolen laptop must be reported to security within 1 hour.", (
        "What should I do if I lose my laptop?",
        "How quickly must a stolen laptop be reported?",
        "Who do I tell when my work computer goes missing?",
        "What is the rule for reporting a lost company laptop?")),
    Topic("phishing", "Suspicious emails are forwarded to phishing@example.com.", (
        "How do I report a phishing email?",
        "Where should I forward suspicious emails?",
        "What address do I send scam emails to?",
        "How can I flag an email that looks like phishing?")),
    Topic("classification", "Data is classified as public, internal, confidential or secret.", (
        "What are the data classification levels?",
        "How is company data classified?",
        "Which sensitivity labels exist for documents?",
        "What categories of data confidentiality do we use?")),
    # -- office -------------------------------------------------------------------------------
    Topic("office_hours", "The office is open from 7:00 to 20:00 on weekdays.", (
        "What are the office opening hours?",
        "When is the office open during the week?",
        "At what times can I get into the office on weekdays?",
        "From when to when is the building open Monday to Friday?")),
    Topic("sunday", "The office is closed on Sundays and public holidays.", (
        "Is the office open on Sundays?",
        "Can I work in the office on a Sunday?",
        "Is the building closed at the weekend on Sundays?",
        "Are the premises accessible on Sundays and holidays?")),
    Topic("coffee", "The coffee machine is descaled every Monday by the facilities team.", (
        "How often is the coffee machine descaled?",
        "When does the coffee machine get descaled?",
        "Who descales the coffee machine and how often?",
        "What is the cleaning schedule of the coffee maker?")),
    Topic("parking", "Parking permits are requested from reception and cost 20 euros a month.", (
        "How do I get a parking permit?",
        "How much does a parking permit cost?",
        "Where can I request a permit for the car park?",
        "What is the process for getting a parking space at the office?")),
    Topic("visitors", "Visitors must be registered a day ahead and receive a badge at reception.", (
        "How do I register a visitor?",
        "What do guests need to enter the building?",
        "How are visitor badges handed out?",
        "What is the process for bringing a guest to the office?")),
    Topic("door_access", "Badge access to the building works between 6:00 and 22:00.", (
        "When does badge access work?",
        "During which hours can I enter with my badge?",
        "At what times does the door access system let badges in?",
        "Can I badge into the building late at night?")),
    # -- operations ---------------------------------------------------------------------------
    Topic("backups", "Database backups run every night at 02:00 UTC.", (
        "When do database backups run?",
        "At what time are the databases backed up?",
        "What is the schedule of the nightly database backup?",
        "When does the backup job for our databases start?")),
    Topic("retention", "Backups are kept for 35 days before they are deleted.", (
        "How long are backups kept?",
        "What is the retention period of backups?",
        "After how many days are old backups deleted?",
        "For how long do we store database backups?")),
    Topic("oncall", "The on-call rotation lasts one week and hands over on Mondays at 10:00.", (
        "How long is an on-call shift?",
        "When does the on-call rotation hand over?",
        "How does the on-call schedule rotate?",
        "For how many days is one person on call?")),
    Topic("severity", "Incidents are rated SEV1 to SEV4; SEV1 pages the on-call engineer at "
          "once.", (
        "What are the incident severity levels?",
        "How are incidents classified by severity?",
        "Which severity pages the on-call engineer?",
        "What does SEV1 mean for an incident?")),
    Topic("freeze", "Deployments are frozen from Friday 15:00 until Monday morning.", (
        "When is the deployment freeze?",
        "Can I deploy on a Friday afternoon?",
        "What are the rules for releasing to production at the end of the week?",
        "When are production deploys not allowed?")),
    # -- HR -----------------------------------------------------------------------------------
    Topic("probation", "The probation period for new hires is 6 months.", (
        "How long is the probation period?",
        "How many months of probation do new employees have?",
        "What is the trial period for new hires?",
        "When does probation end for someone who just joined?")),
    Topic("reviews", "Performance reviews take place twice a year, in June and December.", (
        "How often are performance reviews held?",
        "When do performance reviews happen?",
        "How many appraisals do we have per year?",
        "In which months are employee evaluations done?")),
    Topic("notice", "The notice period for resignation is 2 months.", (
        "What is the notice period?",
        "How much notice do I have to give when I resign?",
        "How long before leaving must I hand in my resignation?",
        "What is the required notice when quitting the company?")),
    Topic("remote", "Employees may work remotely up to 3 days per week.", (
        "How many days can I work from home?",
        "What is the remote work policy?",
        "How many days per week is remote working allowed?",
        "Can I work from home every day?")),
    Topic("referral", "A successful employee referral earns a bonus of 2,000 euros.", (
        "How much is the referral bonus?",
        "What do I get for referring a new hire?",
        "Is there a reward for recommending a candidate who gets hired?",
        "What bonus is paid for an employee referral?")),
)

TOPIC_OF: dict[str, str] = {q: t.key for t in TOPICS for q in t.questions}


def write_handbook(directory: Path) -> list[Path]:
    """One Markdown page per topic, with some surrounding prose, as an organisation would."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in TOPICS:
        title = t.key.replace("_", " ").title()
        body = (f"# {title}\n\n{t.fact}\n\nThis page is part of the employee handbook. "
                f"Questions about {title.lower()} go to the people team, who keep this page "
                "up to date and announce changes in the monthly newsletter.\n")
        path = directory / f"{t.key}.md"
        path.write_text(body)
        paths.append(path)
    return paths


def zipf_workload(n: int, *, s: float = 1.1, reworded: float = 0.4, seed: int = 7) -> list[str]:
    """`n` questions: topics drawn from a Zipf law (rank r has weight 1/r^s), asked in the
    canonical wording or, with probability `reworded`, one of the three rewordings."""
    rng = random.Random(seed)
    order = list(TOPICS)
    rng.shuffle(order)
    weights = [1 / (r**s) for r in range(1, len(order) + 1)]
    out = []
    for topic in rng.choices(order, weights=weights, k=n):
        q = topic.questions[0] if rng.random() >= reworded else rng.choice(topic.questions[1:])
        out.append(q)
    return out
