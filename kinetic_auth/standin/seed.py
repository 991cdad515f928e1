"""Who and what the stand-in knows when it starts: researchers, reviewers, an operator, analyses.

UUIDs are fixed so that hub configuration (admins, reviewers) can name them.
"""

ADA = "6f1c2a8e-0b1d-4c3e-9a55-1a2b3c4d5e01"
GRACE = "6f1c2a8e-0b1d-4c3e-9a55-1a2b3c4d5e02"
KATHERINE = "6f1c2a8e-0b1d-4c3e-9a55-1a2b3c4d5e03"
ROSALIND = "6f1c2a8e-0b1d-4c3e-9a55-1a2b3c4d5e11"  # reviewer
MARIE = "6f1c2a8e-0b1d-4c3e-9a55-1a2b3c4d5e12"  # reviewer
OLIVIA = "6f1c2a8e-0b1d-4c3e-9a55-1a2b3c4d5e21"  # operator (hub admin)

RESEARCHERS = [
    {
        "uuid": ADA,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "role": "researcher",
        "email": "ada.lovelace@example.org",
    },
    {
        "uuid": GRACE,
        "first_name": "Grace",
        "last_name": "Hopper",
        "role": "researcher",
        "email": "grace.hopper@example.org",
    },
    {
        "uuid": KATHERINE,
        "first_name": "Katherine",
        "last_name": "Johnson",
        "role": "researcher",
        "email": "katherine.johnson@example.org",
    },
    {
        "uuid": ROSALIND,
        "first_name": "Rosalind",
        "last_name": "Franklin",
        "role": "reviewer",
        "email": "rosalind.franklin@example.org",
    },
    {
        "uuid": MARIE,
        "first_name": "Marie",
        "last_name": "Curie",
        "role": "reviewer",
        "email": "marie.curie@example.org",
    },
    {
        "uuid": OLIVIA,
        "first_name": "Olivia",
        "last_name": "Operator",
        "role": "operator",
        "email": "olivia.operator@example.org",
    },
]
REVIEWERS = [ROSALIND, MARIE]
ADMINS = [OLIVIA]

ANALYSES = [
    {
        "id": 101,
        "title": "Reading time and quiz scores",
        "description": "Does time spent reading a section predict the score on its quiz?",
        "researchers": [ADA, GRACE],
        "study_ids": [11],
    },
    {
        "id": 102,
        "title": "Spaced practice effects",
        "description": "Retention after spaced versus massed practice questions.",
        "researchers": [ADA],
        "study_ids": [12],
    },
    {
        "id": 103,
        "title": "Hint usage by course",
        "description": "How often hints are opened, course by course.",
        "researchers": [GRACE],
        "study_ids": [13],
    },
    {
        "id": 104,
        "title": "Early warning for dropout",
        "description": "Which first-week signals come before a student stops studying?",
        "researchers": [KATHERINE],
        "study_ids": [11, 14],
    },
]


def default_seed() -> dict:
    return {"researchers": RESEARCHERS, "analyses": ANALYSES}
