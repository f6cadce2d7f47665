"""An entity no service names: record labels, on a table test_registered_entity.py makes.
Every process imports this module through ENTITY_MODULES."""

from chinook.entities import Column, Entity, register

LABEL = register(Entity(
    name="label",
    collection="labels",
    table="record_label",
    primary_key="label_id",
    columns=(
        Column("name", "varchar", max_length=80),
        Column("founded", "int", nullable=True),
    ),
))
