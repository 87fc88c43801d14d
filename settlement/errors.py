"""Settlement's refusals: each a typed domain error with a stable code and a French sentence."""

from __future__ import annotations

from ledger.errors import DomainError


class InvalidPeriod(DomainError):
    code = "invalid_period"
    message = "A period is written 2026-11 (month), 2026-W48 (ISO week) or 2026-11-15 (day)."
    message_fr = "Une période s'écrit 2026-11 (mois), 2026-W48 (semaine ISO) ou 2026-11-15 (jour)."


class PeriodNotEnded(DomainError):
    code = "period_not_ended"
    message = "A period is settled once it has ended (Europe/Paris time)."
    message_fr = "Une période ne se règle qu'une fois terminée (heure de Paris)."


class InvalidFeeRule(DomainError):
    code = "invalid_fee_rule"
    message = "The fee rule is not valid."
    message_fr = "La règle de frais n'est pas valide."


class FeeRuleConflict(DomainError):
    code = "fee_rule_conflict"
    message = "Another rule with the same scope is in force over these dates: the most specific rule would be ambiguous."
    message_fr = "Une autre règle de même portée est en vigueur sur ces dates : la règle applicable serait ambiguë."


class NoFeeRule(DomainError):
    code = "no_fee_rule"
    message = "No fee rule applies to a merchant's takings in this period; create one (0% is a rule too)."
    message_fr = "Aucune règle de frais ne s'applique à ce commerçant pour cette période ; créez-en une (0 % est une règle)."


class BatchNotFound(DomainError):
    code = "batch_not_found"
    message = "No settlement batch has this id."
    message_fr = "Aucun lot de règlement ne porte ce numéro."


class BatchState(DomainError):
    code = "batch_state"
    message = "The batch is not in a state that allows this."
    message_fr = "L'état du lot ne permet pas cette opération."


class BatchInProgress(DomainError):
    code = "batch_in_progress"
    message = "Another batch of this issuer is still a draft or approved: export or reject it first."
    message_fr = "Un autre lot de cet émetteur est encore en brouillon ou approuvé : exportez-le ou rejetez-le d'abord."


class SameApprover(DomainError):
    code = "same_approver"
    message = "A batch is approved by a second person, not by the one who prepared it."
    message_fr = "Un lot doit être approuvé par une autre personne que celle qui l'a préparé."


class NotAllowed(DomainError):
    code = "not_allowed"
    message = "This user may not do this."
    message_fr = "Cet utilisateur n'a pas le droit de faire cela."


class BankDetailsInvalid(DomainError):
    code = "bank_details_invalid"
    message = "An IBAN or BIC is missing or not valid."
    message_fr = "Un IBAN ou un BIC est absent ou invalide."


class PaymentNotFound(DomainError):
    code = "payment_not_found"
    message = "This batch holds no transfer to this merchant."
    message_fr = "Ce lot ne contient aucun virement pour ce commerçant."


class PaymentState(DomainError):
    code = "payment_state"
    message = "Only a transfer that was sent can be marked returned, once."
    message_fr = "Seul un virement envoyé peut être déclaré retourné, une seule fois."


class ReconversionRefused(DomainError):
    code = "reconversion_refused"
    message = "Only a merchant's local-currency units can be converted back to euros."
    message_fr = "Seules les unités de monnaie locale d'un commerçant peuvent être reconverties en euros."
