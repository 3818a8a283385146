"""Structured output through clients nobody on the project wrote: the official OpenAI SDK's
`parse` helper (strict json_schema from a Pydantic model) and LangChain's
`with_structured_output(method="json_schema")`, against the built-in mock (`chat-default`),
which answers a schema with its deterministic sample — as the embedded start does.
"""

from typing import List, Optional

from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field


class Ingredient(BaseModel):
    name: str
    grams: float = Field(ge=0)


class Recipe(BaseModel):
    title: str
    servings: int = Field(ge=1, le=12)
    ingredients: List[Ingredient]
    notes: Optional[str] = None


def test_openai_parse_returns_the_pydantic_object(client):
    res = client.beta.chat.completions.parse(
        model="chat-default",
        messages=[{"role": "user", "content": "A pancake recipe."}],
        response_format=Recipe,
    )
    recipe = res.choices[0].message.parsed
    assert isinstance(recipe, Recipe)
    assert 1 <= recipe.servings <= 12
    assert recipe.ingredients and all(i.grams >= 0 for i in recipe.ingredients)
    assert Recipe.model_validate_json(res.choices[0].message.content) == recipe


def test_langchain_with_structured_output_json_schema(base_url, admin_key):
    model = ChatOpenAI(
        model="chat-default", base_url=base_url + "/v1", api_key=admin_key, max_retries=0
    )
    structured = model.with_structured_output(Recipe, method="json_schema")
    recipe = structured.invoke("A soup recipe.")
    assert isinstance(recipe, Recipe)
    assert recipe.title and recipe.ingredients
    # include_raw: the raw message is the JSON text the parsed object came from.
    raw = model.with_structured_output(Recipe, method="json_schema", include_raw=True)
    out = raw.invoke("A soup recipe.")
    assert out["parsing_error"] is None
    assert Recipe.model_validate_json(out["raw"].content) == out["parsed"]
