from tests.conftest import PASSENGER, count_rows


def test_predict_one_stores_both_rows(client, app):
    response = client.post("/api/predict", json=PASSENGER)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["predictions"][0]["PassengerId"] == 892
    assert count_rows(app) == (1, 1)
