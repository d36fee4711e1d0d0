"""A test-only validator for lambda-ber-schema instances (plain dicts).

Why our own instead of ``linkml validate``: the ``linkml`` package pulls a
large tree (generators, pyshex, rdflib plugins...) for one job, and its
JSON-Schema route needs a generated schema we may not store (the upstream
schema has no licence). ``linkml_runtime.SchemaView`` alone gives the
induced slots of every class, which is all the closed-world checks below
need, and it loads the snapshot straight from ../shared at test time.

It checks what the upstream generated pydantic classes
(``extra="forbid"``) enforce:

* closed slot sets: no key a class does not have (subclass slots inside a
  base-class list are rejected, as there is no type designator);
* required slots present and not null;
* multivalued slots are lists, single-valued ones are not;
* enums: values among the permissible values;
* class ranges: inlined objects validated recursively; references (a
  class with an identifier, not inlined) are id strings that must resolve
  to an object of that class (or a descendant) in the same document when
  the root holds a list of that class (others, e.g. ontology terms, are
  external);
* types: string, integer, float/double, boolean, uriorcurie/uri/curie;
* identifiers: valid URI-or-CURIE and unique in the document.

The snapshot lacks ``functional_annotation.yaml`` (imported by the main
schema; it only defines the ranges of some ``Sample`` slots), so it is
replaced by an empty stub; a record that uses those ranges is reported.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from linkml_runtime.utils.metamodelcore import URI, Curie, URIorCURIE
from linkml_runtime.utils.schemaview import SchemaView

_STUB = {"id": "https://example.org/empiarfs-test/functional_annotation_stub",
         "name": "functional_annotation"}


def load_schema(path: Path) -> SchemaView:
    """A SchemaView of the lambda-ber snapshot at ``path``."""
    return SchemaView(str(path), importmap={"functional_annotation": _STUB})


class Validator:
    """Validates instances of one schema; caches induced slots per class."""

    def __init__(self, view: SchemaView):
        self.view = view
        self._slots: dict = {}
        self._classes = set(view.all_classes())
        self._enums = {name: set(enum.permissible_values or {})
                       for name, enum in view.all_enums().items()}
        self._types = set(view.all_types())

    def slots(self, class_name: str) -> dict:
        if class_name not in self._slots:
            self._slots[class_name] = {s.name: s for s in self.view.class_induced_slots(class_name)}
        return self._slots[class_name]

    def validate(self, instance, class_name: str = "Dataset") -> list[str]:
        """Every problem found, as ``"<path>: <what>"`` strings (empty = valid)."""
        errors: list[str] = []
        ids: dict = {}           # id -> class name
        refs: list = []          # (path, id, range class)
        self._object(instance, class_name, "$", errors, ids, refs)
        # Only classes the root document holds in its own lists must resolve
        # locally; other references (an organism's NCBITaxon term) are external.
        held = {s.range for s in self.slots(class_name).values() if s.range in self._classes}
        for path, ref, range_class in refs:
            found = ids.get(ref)
            if found is None and not held & set(self.view.class_ancestors(range_class)):
                continue
            if found is None:
                errors.append(f"{path}: reference {ref!r} resolves to no object in the document")
            elif found not in self.view.class_descendants(range_class):
                errors.append(f"{path}: reference {ref!r} is a {found}, expected {range_class}")
        return errors

    def _object(self, value, class_name, path, errors, ids, refs):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a {class_name} object, got {type(value).__name__}")
            return
        slots = self.slots(class_name)
        for key in value:
            if key not in slots:
                errors.append(f"{path}.{key}: {class_name} has no slot {key!r}")
        for name, slot in slots.items():
            present = name in value and value[name] is not None
            if slot.required and not present:
                errors.append(f"{path}.{name}: required slot of {class_name} is missing")
            if not present:
                continue
            item = value[name]
            here = f"{path}.{name}"
            if slot.multivalued:
                if not isinstance(item, list):
                    errors.append(f"{here}: multivalued slot needs a list")
                    continue
                for i, element in enumerate(item):
                    self._value(element, slot, f"{here}[{i}]", errors, ids, refs)
            else:
                if isinstance(item, list):
                    errors.append(f"{here}: single-valued slot given a list")
                    continue
                self._value(item, slot, here, errors, ids, refs)
            if slot.identifier:
                if item in ids:
                    errors.append(f"{here}: identifier {item!r} is not unique")
                ids[item] = class_name

    def _value(self, value, slot, path, errors, ids, refs):
        rng = slot.range or "string"
        if rng in self._enums:
            if value not in self._enums[rng]:
                errors.append(f"{path}: {value!r} is not a permissible value of {rng}")
        elif rng in self._classes:
            if self.view.get_identifier_slot(rng) is not None and not slot.inlined \
                    and not slot.inlined_as_list:
                if not isinstance(value, str):
                    errors.append(f"{path}: a reference to a {rng} must be its id string")
                else:
                    refs.append((path, value, rng))
            else:
                self._object(value, rng, path, errors, ids, refs)
        elif rng in self._types:
            problem = _type_problem(value, self._base_type(rng))
            if problem:
                errors.append(f"{path}: {problem} (range {rng})")
        else:
            errors.append(f"{path}: range {rng!r} is not defined in the loaded schema")

    def _base_type(self, rng):
        seen = set()
        while rng not in _CHECKS and rng not in seen:
            seen.add(rng)
            parent = self.view.get_type(rng).typeof
            if not parent:
                break
            rng = parent
        return rng


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _is_number,
    "double": _is_number,
    "decimal": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "uriorcurie": lambda v: isinstance(v, str) and URIorCURIE.is_valid(v),
    "uri": lambda v: isinstance(v, str) and URI.is_valid(v),
    "curie": lambda v: isinstance(v, str) and Curie.is_valid(v),
    "date": lambda v: isinstance(v, (str, datetime.date)),
    "datetime": lambda v: isinstance(v, (str, datetime.datetime)),
}


def _type_problem(value, base):
    check = _CHECKS.get(base, lambda v: isinstance(v, str))
    return None if check(value) else f"{value!r} is not a valid {base}"
