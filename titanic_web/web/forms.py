"""The passenger form, built from the schema so the two cannot disagree."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired
from wtforms import Field as WTField
from wtforms import SelectField, StringField
from wtforms.fields.choices import SelectChoice  # type: ignore[attr-defined]  # WTForms 3.3; stubs are 3.2
from wtforms.validators import ValidationError

from titanic_web import schema


class SchemaRule:
    """A WTForms validator that applies the schema's rule for one field."""

    def __init__(self, spec: schema.Field) -> None:
        self.spec = spec
        # Shown by the browser as the "required" marker; the schema still decides.
        self.field_flags = {"required": True} if spec.required else {}

    def __call__(self, form: FlaskForm, field: WTField) -> None:
        text = field.data if isinstance(field.data, str) else (None if field.data is None else str(field.data))
        value = schema.parse_text(self.spec, text)
        if value is None and not self.spec.required and not self.spec.nullable:
            return  # empty optional field: the default applies
        _, message = schema.check_value(self.spec, value)
        if message:
            raise ValidationError(message)


def _field(spec: schema.Field) -> WTField:
    render_kw: dict[str, Any] = {"aria-describedby": f"{spec.name}-hint"}
    if spec.placeholder:
        render_kw["placeholder"] = spec.placeholder
    default = "" if spec.form_default is None else str(spec.form_default)
    if spec.choices:
        choices = [SelectChoice(str(value), label) for value, label in spec.choices]
        if not spec.required:
            choices.insert(0, SelectChoice("", "unknown"))
        else:
            # HTML allows `required` on such a select only with an empty first option, which
            # these (a choice is always selected) have no use for: say it to assistive technology.
            render_kw.update({"required": False, "aria-required": "true"})
        return SelectField(
            spec.label,
            choices=choices,
            default=default,
            validate_choice=False,  # the schema's rule names the choices; WTForms' own would say it again, vaguely
            validators=[SchemaRule(spec)],
            description=spec.hint,
            render_kw=render_kw,
        )
    if spec.kind in (int, float):
        render_kw.update(inputmode="decimal" if spec.kind is float else "numeric")
    elif spec.max_length:
        render_kw["maxlength"] = spec.max_length
    return StringField(
        spec.label, default=default, validators=[SchemaRule(spec)], description=spec.hint, render_kw=render_kw
    )


class PassengerForm(FlaskForm):
    """One field per schema field, in the schema's order."""

    def process(self, formdata: Any = None, obj: Any = None, data: Any = None, **kwargs: Any) -> None:
        """Fill the fields; in a submitted form, a field left out of the post is empty, like a
        field left blank (required: an error; optional: unknown), never its initial value."""
        super().process(formdata, obj, data, **kwargs)
        for field in self.passenger_fields():
            if field.raw_data == []:  # submitted without it (None: nothing was submitted)
                field.data = ""

    def passenger_fields(self) -> list[WTField]:
        return [self[name] for name in schema.FIELD_NAMES]

    def text_values(self) -> dict[str, str]:
        return {name: self[name].data or "" for name in schema.FIELD_NAMES}


for _spec in schema.FIELDS:
    setattr(PassengerForm, _spec.name, _field(_spec))


class BatchForm(FlaskForm):
    """The batch page: one CSV file in the competition's test.csv layout."""

    file = FileField(
        "Passenger file (CSV)",
        validators=[
            FileRequired("Choose a CSV file to upload."),
            FileAllowed(["csv", "txt"], "must be a CSV file (.csv) in the competition's test.csv layout."),
        ],
        description="Columns as in the competition's test.csv: PassengerId, Pclass, Name, Sex, Age, SibSp, "
        "Parch, Ticket, Fare, Cabin, Embarked (Pclass and Sex required).",
        render_kw={"accept": ".csv,text/csv"},
    )
