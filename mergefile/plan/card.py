"""The text files of an output made from its plan: the model card and ``mergebuild_config.yml``.

Planning-stage data (the plan's inputs, jobs and target) turned into the io layer's card
records; the publisher writes the texts and modular layouts add their own files to them.
"""

from __future__ import annotations

from mergefile.plan.jobs import TargetPlan


def card_texts(plan: TargetPlan) -> dict[str, str]:
    """README.md (model card) and mergebuild_config.yml of an output, from its plan."""
    from mergefile.io.header import code_name
    from mergefile.io.hub import snapshot_of
    from mergefile.io.model_card import CardData, CardInput, ref_namer, render_card, render_mergekit_yaml

    bases = {j.inputs[j.base_index].model for j in plan.jobs if j.base_index is not None}
    inputs = []
    for i, m in enumerate(plan.inputs):
        snap = snapshot_of(m.path) if m.hub else None
        inputs.append(
            CardInput(
                m.label,
                m.hub[0] if m.hub else None,
                m.hub[1] if m.hub else None,
                snap[1] if snap else None,
                m.target is not None,
                i in bases,
            )
        )
    codes = {j.result_dtype for j in plan.jobs}
    dtype = code_name(codes.pop()) if len(codes) == 1 else None
    t = plan.target
    is_yaml = bool(t.loc and str(t.loc.file).endswith((".yml", ".yaml")))
    card = CardData(
        plan.name,
        plan.method.name,
        plan.method.reference,
        plan.method.summary,
        tuple(inputs),
        dtype,
        t.origin,
        "yaml" if is_yaml else "mergefile",
        plan.hub_lineage,
    )
    namer = ref_namer({m.label: m.hub[0] for m in plan.inputs if m.hub})
    config = render_mergekit_yaml(t, namer, dtype, source_yaml=t.origin if is_yaml else None)
    return {"README.md": render_card(card), "mergebuild_config.yml": config}
